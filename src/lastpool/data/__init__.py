"""Data loading: tables from files, label sets and the train/validation split."""

from lastpool.data.labels import LabelSet
from lastpool.data.split import stratified_split
from lastpool.data.tables import Table, load_demo, read_table

__all__ = ["LabelSet", "Table", "load_demo", "read_table", "stratified_split"]

"""A lastpool model folder as an MLflow pyfunc model: ``mlflow.pyfunc.load_model(uri).predict(frame)``
takes a DataFrame with a ``text`` column (and ``text_pair`` for a model of pairs; a one-column frame or a
list of strings also works) and returns ``lastpool predict``'s columns, one row per text.

Saved as "models from code" (``pyfunc_model.py`` is the code): nothing is pickled, loading runs lastpool's
own safetensors loader on the folder kept as the model's artifact.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import mlflow.pyfunc
from mlflow.pyfunc import PythonModel

from lastpool.version import __version__

CODE = Path(__file__).with_name("pyfunc_model.py")


# MLflow warns, as each PythonModel class is made, that predict has no type hints: it has none on purpose.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)

    class LastpoolModel(PythonModel):
        def load_context(self, context: Any) -> None:
            from lastpool.classifier import Classifier

            self.classifier = Classifier.load(context.artifacts["lastpool_model"])

        # Not annotated: MLflow reads predict's type hints as an input schema (and warns at Any).
        def predict(self, context, model_input, params=None):
            import pandas as pd

            from lastpool.scoring.rows import prediction_rows

            frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"text": list(model_input)})
            column = "text" if "text" in frame.columns else frame.columns[0]
            texts = [str(t) for t in frame[column]]
            pairs = [str(t) for t in frame["text_pair"]] if "text_pair" in frame.columns else None
            rows = prediction_rows(self.classifier, texts, pairs)
            return pd.DataFrame([{k: v for k, v in row.items() if k not in ("text", "text_pair")} for row in rows])


def save_pyfunc(model_dir: Path, path: Path) -> None:
    with warnings.catch_warnings():  # MLflow warns that it cannot infer a signature from the code's hints
        warnings.simplefilter("ignore")
        mlflow.pyfunc.save_model(str(path), python_model=str(CODE), artifacts={"lastpool_model": str(model_dir)},
                                 pip_requirements=[f"lastpool=={__version__}"])

"""Models: the from-scratch decoder, pooling, and the classifier that joins backbone, pooler and head."""

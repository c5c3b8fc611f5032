"""The code of lastpool's MLflow pyfunc model (MLflow runs this file when it loads the model)."""

from mlflow.models import set_model

from lastpool.tracking.pyfunc import LastpoolModel

set_model(LastpoolModel())

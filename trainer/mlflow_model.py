"""The MLflow pyfunc flavour of an exported model (model/model.pt and model.json, export.py): what
controller/mlflow_sync.py logs and registers as a job's best model.

    model = mlflow.pyfunc.load_model("models:/fridge/1")
    model.predict(["photo.jpg"])                        # paths, URLs or encoded bytes
    model.predict(pandas.DataFrame({"image": [...]}))   # as `mlflow models serve` sends them

Predictions are export.LoadedModel's records (the training JSONL schema plus scores). torch is
imported when the model is loaded, not when this module is: the controller pickles an `ImageModel`
without loading torch.
"""
from __future__ import annotations

from typing import Any

import mlflow.pyfunc

ARTIFACT = "model"   # the key of the exported model folder in the logged model's artifacts


class ImageModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        from . import export

        self._model = export.load_model(context.artifacts[ARTIFACT])

    # No type hints on the input: MLflow would take them as a schema and refuse DataFrames or bytes.
    def predict(self, context, model_input, params=None):
        return self._model.predict(images(model_input))


def images(model_input: Any) -> list[Any]:
    """The images of a pyfunc input: a DataFrame's `image` (or `image_url`, else first) column, a
    list or array, or one image."""
    if hasattr(model_input, "columns"):
        columns = list(model_input.columns)
        column = next((c for c in ("image", "image_url") if c in columns), columns[0])
        return list(model_input[column])
    if isinstance(model_input, (str, bytes)):
        return [model_input]
    return list(model_input)

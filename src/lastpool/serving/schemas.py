"""The request and response bodies of the HTTP API, built for the served model so that its OpenAPI schema
says exactly what the server accepts (the labels' count bounds ``top_k``; ``text_pairs`` is there only for
a model of pairs), and the engines' ``/classify`` shape (vLLM, SGLang) beside lastpool's own.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    create_model,
    field_validator,
)

# At least one character that str.strip() keeps: what "not empty" means to the model. Python's whitespace
# spelled out, since each regex dialect (pydantic's Rust, JSON Schema's ECMA, the fuzzers' Python) reads \s
# a little differently (\x1c-\x1f, \x85).
NON_BLANK = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
Text = Annotated[StrictStr, StringConstraints(pattern=NON_BLANK)]


class _ClassifyBody(BaseModel):
    """What every ``/v1/classify`` body shares: unknown fields are refused, and ``top_k`` is JSON
    Schema's integer (2 and 2.0, not "2", true or 2.5)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("top_k", mode="before", check_fields=False)
    @classmethod
    def _whole_number(cls, value: Any) -> Any:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        return value


class LabelProbability(BaseModel):
    label: str
    probability: float


class ClassifyResult(BaseModel):
    """One text's answer: what it holds follows the model's task (the response's ``task``)."""

    label: str | None = Field(default=None, description="single-label: the most probable label")
    labels: list[str] | None = Field(default=None, description="multi-label: the labels whose probability reaches "
                                     "their threshold (possibly none)")
    value: float | None = Field(default=None, description="regression: the predicted value")
    probabilities: dict[str, float] | None = Field(
        default=None, description="single- and multi-label: every label's probability, in the model's label order "
        "(multi-label: each label's own, not summing to 1)")
    top_k: list[LabelProbability] | None = Field(default=None, description="only when top_k was given")
    truncated: bool = Field(description="the text was longer than the model's max_length tokens and was cut")


class ModelRef(BaseModel):
    id: str = Field(description="short hash of the model's lastpool.json (architecture, labels, training record)")
    name: str | None = None
    backbone: str


class ClassifyResponse(BaseModel):
    task: Literal["single", "multilabel", "regression"] = Field(
        description="what the model predicts: one label (label), a set of labels (labels) or a number (value)")
    results: list[ClassifyResult]
    truncated_count: int
    model: ModelRef


def classify_request(task: str, n_labels: int, pairs: bool, max_batch: int) -> type[BaseModel]:
    """``POST /v1/classify``'s body for this model. Strict types: a number is not silently taken for a
    text, nor a string for a list of texts."""
    texts_field = Field(min_length=1, description=f"texts to classify (at most {max_batch})",
                        json_schema_extra={"maxItems": max_batch})
    fields: dict[str, Any] = {"texts": (list[Text], texts_field)}
    if pairs:
        fields["text_pairs"] = (list[Text], Field(description="each text's second text, in the same order (as many "
                                                  "as texts)"))
    if task != "regression":
        fields["top_k"] = (Annotated[StrictInt, Field(ge=1, le=n_labels)] | None,
                           Field(default=None, description="also return the k most probable labels"))
    return create_model("ClassifyRequest", __base__=_ClassifyBody, **fields)


# --- the engines' shape: vLLM's and SGLang's /classify ---------------------------------------------------


def engine_request(max_batch: int) -> type[BaseModel]:
    """``POST /classify``'s body as vLLM and SGLang take it: ``input`` is one text or a list; ``model``
    and their other fields (``user``, ``priority``, ...) are accepted and do not change the answer."""
    texts = Annotated[list[Text], Field(min_length=1, json_schema_extra={"maxItems": max_batch})]
    return create_model(
        "EngineClassifyRequest", __config__=ConfigDict(extra="ignore"),
        model=(StrictStr | None, Field(default=None, description="ignored: this server serves one model")),
        input=(Text | texts, Field(description=f"a text, or a list of at most {max_batch} texts")),
    )


class EngineResult(BaseModel):
    index: int
    label: str | None = Field(description="the most probable label (null for a regression)")
    probs: list[float] = Field(description="each label's probability in the model's label order (multi-label: "
                               "each label's own; regression: the value)")
    num_classes: int
    labels: list[str] | None = Field(default=None, description="lastpool's addition, multi-label: the labels "
                                     "over their thresholds")
    value: float | None = Field(default=None, description="lastpool's addition, regression: the predicted value")


class EngineUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class EngineClassifyResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[EngineResult]
    usage: EngineUsage

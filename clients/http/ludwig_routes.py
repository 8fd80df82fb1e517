"""Ludwig serve's API for trained models: `POST /models/{model}/predict` and
`/models/{model}/batch_predict` (a model is a job id or an artifact directory), and with
`serve http --model_path` the same at `/predict` and `/batch_predict`.

`predict` takes one row as form, multipart or JSON fields named after the input features and
answers one object of Ludwig's output columns (`<f>_predictions`, `<f>_probability`,
`<f>_probabilities`, `<f>_probabilities_<class>`). `batch_predict` takes a `dataset` field (form
or JSON, the table in pandas "split" orientation: columns, data, optional index) and answers in
that orientation. Rows go to the embedder's online prediction: no data set, no job; concurrent
single-row predictions share PredictRows calls (coalesce.py).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request
from starlette.formparsers import MultiPartException

from clients.http.backend import Backend
from clients.http.errors import ludwig_error
from clients.http.inputs import renamed_cells, unicode_values
from tunewire.errors import InvalidArgument, TunewireError


async def _fields(request: Request) -> dict:
    """The request's fields: a JSON object, or form / multipart fields (files read as text)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind in ("application/x-www-form-urlencoded", "multipart/form-data"):
        try:
            form = await request.form()
        except (MultiPartException, ValueError) as exc:  # python-multipart's are ValueErrors
            raise InvalidArgument(f"the form does not parse: {exc}", field="body") from None
        out = {}
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                value = (await value.read()).decode("utf-8", "replace")
            out[key] = value
        return out
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deep
        raise InvalidArgument(f"the body is not JSON: {exc}", field="body") from None
    if not isinstance(body, dict):
        raise InvalidArgument("the body must be a JSON object of fields", field="body")
    unicode_values(body, "")
    return body


def _row(fields: dict) -> dict:
    """One row's fields, each one value: a list or an object is no cell of a table."""
    for name, value in fields.items():
        if isinstance(value, (list, dict)):
            raise InvalidArgument(
                "must be one value (a string, number, boolean or null)", field=str(name)
            )
    return fields


def _scalar(value) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _split_table(value) -> tuple[dict[str, list], list]:
    """pandas "split" orientation → (columns, index); each cell one value, each column named
    once, the index (optional) one label a row."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise InvalidArgument(f"not JSON: {exc}", field="dataset") from None
        unicode_values(value, "dataset")
    if not isinstance(value, dict) or "columns" not in value or "data" not in value:
        raise InvalidArgument(
            'must be a table in pandas "split" orientation: {"columns": [...], "data": [[...]]}',
            field="dataset",
        )
    names, rows = value["columns"], value["data"]
    if not isinstance(names, list):
        raise InvalidArgument("must be a list of column names", field="dataset.columns")
    if not isinstance(rows, list):
        raise InvalidArgument("must be a list of rows", field="dataset.data")
    seen: set[str] = set()
    for j, name in enumerate(names):
        if not isinstance(name, (str, int)) or isinstance(name, bool) or str(name) in seen:
            what = "twice" if str(name) in seen else "not a name (a string)"
            raise InvalidArgument(f"column {name!r} is {what}", field=f"dataset.columns[{j}]")
        seen.add(str(name))
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != len(names):
            raise InvalidArgument(
                f"row {i} does not have {len(names)} values", field=f"dataset.data[{i}]"
            )
        for j, cell in enumerate(row):
            if not _scalar(cell):
                raise InvalidArgument(
                    "must be one value (a string, number, boolean or null)",
                    field=f"dataset.data[{i}][{j}]",
                )
    index = value.get("index")
    if index is None:
        index = list(range(len(rows)))
    elif not isinstance(index, list) or len(index) != len(rows) or not all(map(_scalar, index)):
        raise InvalidArgument(f"must be a list of {len(rows)} row labels", field="dataset.index")
    return {str(n): [row[j] for row in rows] for j, n in enumerate(names)}, index


def _table_cell(column: int, row: int | None) -> str:
    """PredictRows' `columns[column].values[row]` in the request's "split" table."""
    return "dataset.data" if row is None else f"dataset.data[{row}][{column}]"


def router(backend: Backend, token_of) -> APIRouter:
    api = APIRouter(tags=["Ludwig serve"])

    async def _predict_as(token, model: str, columns: dict) -> dict:
        """The backend's blocking call in a worker thread, on behalf of the caller's token."""
        return await backend.in_thread(token, backend.predict, model, columns)

    async def predict(model: str, request: Request):
        token = token_of(request)
        try:
            fields = _row(await _fields(request))
            return await backend.predict_row(token, model, fields)
        except TunewireError as err:
            return ludwig_error(err)

    async def batch_predict(model: str, request: Request):
        token = token_of(request)
        try:
            fields = await _fields(request)
            if "dataset" not in fields:
                raise InvalidArgument("is required", field="dataset")
            columns, index = _split_table(fields["dataset"])
            out = await _predict_as(token, model, columns)
        except TunewireError as err:
            return ludwig_error(renamed_cells(err, _table_cell))
        names = list(out)
        return {
            "index": index,
            "columns": names,
            "data": [[out[n][i] for n in names] for i in range(len(index))],
        }

    @api.post("/models/{model:path}/predict")
    async def predict_model(model: str, request: Request):
        return await predict(model, request)

    @api.post("/models/{model:path}/batch_predict")
    async def batch_predict_model(model: str, request: Request):
        return await batch_predict(model, request)

    if backend.served_model is not None:
        served = backend.served_model

        @api.post("/predict")
        async def predict_served(request: Request):
            return await predict(served, request)

        @api.post("/batch_predict")
        async def batch_predict_served(request: Request):
            return await batch_predict(served, request)

    return api

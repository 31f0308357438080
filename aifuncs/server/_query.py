"""The query routes: Databricks' invocations and OpenAI's chat, completions and embeddings, bound in the
request's session (on the event loop when the binding is kept and the body small) and answered on the server's
loop by the session's runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from aifuncs.runtime import CallSpec, entities_answering
from aifuncs.server._errors import ApiError
from aifuncs.server._invoke import Bindings, Prepared, prepare, prepare_on_loop
from aifuncs.server._openai import chat, completions, embeddings, kind_of, sse, streamed
from aifuncs.server._routing import SMALL_BODY_BYTES, WORKER, AsyncWork
from aifuncs.session import Session

_BODIES: dict[str, Callable[..., Prepared]] = {
    "chat": chat,
    "completions": completions,
    "embeddings": embeddings,
}


def invocations(bindings: Bindings) -> AsyncWork:
    """`/serving-endpoints/{name}/invocations` (and its served entity's route), bound through `bindings`."""

    async def route(request: Request, session: Session, body: Any) -> Response:
        name = request.path_params["name"]
        entity = request.path_params.get("served_model_name")
        kind = kind_of(body) if isinstance(body, dict) else None
        prepare_body = _BODIES.get(kind or "", prepare)
        stream = kind in ("chat", "completions") and bool(body.get("stream"))
        answer, served = await _answered(
            bindings,
            prepare_body,
            name,
            body,
            session,
            _small(request),
            stream,
            databricks=True,
            entity=entity,
        )
        return answer if isinstance(answer, Response) else _reply(answer, served, streamed=stream)

    return route


async def _answered(
    bindings: Bindings,
    prepare_body: Callable[..., Prepared],
    name: str,
    body: Any,
    session: Session,
    small: bool,
    stream: bool = False,
    databricks: bool = False,
    entity: str | None = None,
) -> tuple[dict[str, Any] | Response, str]:
    """Bind (on this loop when the binding is kept and the body small, else in a worker thread: the catalog
    is SQLite), then await the runtime's answer on this loop: no thread waits while the model works. With the
    served entity that answered (the endpoint's own name for an endpoint of one model)."""
    prepared = prepare_on_loop(prepare_body, bindings, name, body, session) if small else None
    if prepared is None:
        prepared = await run_in_threadpool(prepare_body, bindings, name, body, session)
    if entity is not None:  # /served-models/{entity}/invocations: that entity alone
        prepared = (_one_entity(prepared[0], entity), *prepared[1:])
    with entities_answering() as answered:
        if stream:  # token by token where the endpoint's kind can (`_openai.streamed`), else whole below
            headers = {"served-model-name": name, "x-aifuncs-worker": WORKER}
            events = await streamed(session.runtime, prepared, name, body, headers, databricks=databricks)
            if events is not None:
                return events, headers["served-model-name"]
        call, rows, word = prepared
        answers = await session.runtime.answer_call(call, rows)
    return word(answers), answered[-1] if answered else call.endpoint.entity_name


def _one_entity(call: CallSpec, entity: str) -> CallSpec:
    """The call narrowed to one served entity of its endpoint (404 naming those it has)."""
    try:
        return dataclasses.replace(call, endpoint=call.endpoint.served_entity(entity))
    except KeyError:
        names = ", ".join(e.name for e in call.endpoint.served_entities())
        raise ApiError(
            404,
            "RESOURCE_DOES_NOT_EXIST",
            f"Endpoint {call.endpoint.name!r} serves no entity {entity!r}; it serves {names}.",
        ) from None


def _small(request: Request) -> bool:
    """A body small enough to turn into rows on the event loop (a bigger one is parsed in a worker thread)."""
    length = request.headers.get("content-length")
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY_BYTES


def _reply(answer: dict[str, Any], name: str, *, streamed: bool) -> Response:
    headers = {"served-model-name": name, "x-aifuncs-worker": WORKER}
    if streamed:
        return StreamingResponse(iter(sse(answer)), media_type="text/event-stream", headers=headers)
    return JSONResponse(answer, headers=headers)


def openai_route(bindings: Bindings, kind: str) -> AsyncWork:
    """`/serving-endpoints/chat/completions` and the like: OpenAI's routes, `model` naming the endpoint."""
    prepare_body = _BODIES[kind]

    async def route(request: Request, session: Session, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("model"), str):
            raise ApiError(400, "INVALID_PARAMETER_VALUE", "Name the endpoint as model.")
        stream = kind != "embeddings" and bool(body.get("stream"))
        answer, served = await _answered(
            bindings, prepare_body, body["model"], body, session, _small(request), stream
        )
        return answer if isinstance(answer, Response) else _reply(answer, served, streamed=stream)

    return route

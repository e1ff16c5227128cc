"""The demo's RAG part: one agent answers with retrieved context, not the whole manual.

A small documentation set of a fictional framework ("Quillstack") is chunked, embedded
through the fleet and kept in pgvector; the agent's question retrieves three chunks,
and the demo prints what the prompt costs in tokens against pasting every document.
"""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from schemas import Message
from tasks import ContextRetriever, FleetClient
from tasks.vectors import PgVectorStore
from workers.pipeline.pricing import estimate_prompt_tokens

__all__ = ["DOCS", "QUESTION", "run_rag_demo"]

COLLECTION = "demo-quillstack"
QUESTION = "How do I configure retries with backoff for a flaky route?"
SYSTEM = "You answer questions about the Quillstack framework from the context given."

_TEXTS = {
    "routing": "Quillstack routing maps URL paths to handler functions. Declare a route "
               "with @app.route('/path') and Quillstack matches routes in declaration "
               "order; path parameters such as /users/{id} arrive as keyword arguments.",
    "retries": "Retries in Quillstack are set per route with retry=Retry(attempts=3, "
               "backoff=0.5). A flaky route retries failed handler calls with exponential "
               "backoff and jitter; backoff doubles after each failed attempt.",
    "middleware": "Quillstack middleware wraps every request. A middleware is a class with "
                  "before(request) and after(response) hooks, registered with "
                  "app.use(MyMiddleware()); hooks run in order, then in reverse.",
    "templates": "Quillstack renders templates with the quill engine. Put template files "
                 "under templates/, call render('page.html', title='Home'), and blocks "
                 "extend a base layout with {% extends 'base.html' %}.",
    "database": "The Quillstack database layer opens a connection pool from QUILL_DB_URL. "
                "Use async with db.transaction() for a transaction; queries return typed "
                "rows, and migrations live in migrations/ as numbered SQL files.",
    "auth": "Authentication in Quillstack uses sessions or bearer tokens. Protect a route "
            "with @requires_login; tokens are verified by the auth middleware and the "
            "user is available as request.user.",
    "caching": "Quillstack caching stores handler responses in memory or Redis. Decorate "
               "a handler with @cached(ttl=60); the cache key includes the path and "
               "query string, and cache.invalidate(prefix) clears entries.",
    "testing": "Test Quillstack apps with the TestClient: client = TestClient(app); "
               "response = client.get('/users/1'); assert response.status == 200. "
               "Fixtures can override dependencies with app.override(...).",
    "deployment": "Deploy Quillstack behind any ASGI server. Run quill serve --workers 4 "
                  "in production, set QUILL_ENV=production, and put static files behind "
                  "a CDN; health checks answer on /healthz.",
    "logging": "Quillstack logging writes JSON lines. Configure the level with "
               "QUILL_LOG_LEVEL=debug; every request gets a request id that appears in "
               "each log line and in the X-Request-Id response header.",
    "websockets": "Quillstack websockets use @app.websocket('/ws'). The handler receives "
                  "a socket; await socket.receive_text() and await socket.send_text(...) "
                  "exchange messages until the client disconnects.",
    "config": "Quillstack configuration reads quill.toml and environment variables; an "
              "environment variable QUILL_SECTION_KEY overrides key in [section]. Unknown "
              "keys stop start-up with an error naming the key.",
    "background": "Background tasks in Quillstack run after the response is sent: "
                  "return Response(..., background=send_email(user)). Long jobs belong "
                  "in a queue worker instead of a background task.",
    "errors": "Quillstack error handling maps exceptions to responses. Register a handler "
              "with @app.exception_handler(NotFound); unhandled errors return 500 with "
              "the request id, and debug mode shows the traceback.",
}

#: The documentation set, in the shape ContextRetriever.add_documents takes.
DOCS = [{"id": key, "text": text, "metadata": {"section": key}}
        for key, text in _TEXTS.items()]


def _messages(context: str) -> list[Message]:
    return [Message(role="system", content=SYSTEM),
            Message(role="user", content=f"Context:\n{context}\n\nQuestion: {QUESTION}")]


def run_rag_demo(client: FleetClient, database_url: str, console: Console) -> None:
    """Index the docs, retrieve for one question, answer it, and show the saving."""
    with PgVectorStore(database_url) as store:
        rag = ContextRetriever(COLLECTION, client=client, store=store)
        chunks = rag.add_documents(DOCS)
        hits = rag.retrieve(QUESTION, top_k=3)
        context = rag.retrieve_and_format(QUESTION, top_k=3)
    whole = "\n\n".join(f"[{d['id']}]\n{d['text']}" for d in DOCS)
    messages = _messages(context)
    result = client.complete([m.model_dump(exclude_none=True) for m in messages],
                             tier="simple", agent="rag-demo", max_tokens=200)
    with_rag = result.usage.prompt_tokens or estimate_prompt_tokens(messages)
    without = estimate_prompt_tokens(_messages(whole))
    saving = 100.0 * (1 - with_rag / without) if without else 0.0

    console.rule("[bold]RAG: retrieved context instead of the whole manual")
    console.print(f"{chunks} chunks of {len(DOCS)} documents indexed in pgvector "
                  f"(collection [cyan]{COLLECTION}[/])")
    console.print(f"Question: [italic]{QUESTION}[/]")
    table = Table("rank", "document", "score")
    for rank, hit in enumerate(hits, 1):
        table.add_row(str(rank), hit.id, f"{hit.score:.3f}")
    console.print(table)
    console.print(f"Answer ({result.model}): {result.content[:300]}")
    console.print(f"Prompt tokens with retrieval: [bold]{with_rag}[/]; with every document: "
                  f"[bold]{without}[/]; saving [green]{saving:.1f}%[/]")

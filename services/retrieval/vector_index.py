"""The vector index: ids with a unit vector and flat metadata in named collections, queried by cosine
similarity with a metadata filter.

:class:`VectorIndex` is the interface; :class:`ChromaIndex` implements it over Chroma, embedded in the
process (``PersistentClient`` on a directory) or a Chroma server (``HttpClient``). The index holds
derived data only: the services' SQL rows are the source of truth and can rebuild it.

Filters use Chroma's where syntax, e.g. ``{"$and": [{"user_id": "u"}, {"bucket": {"$in": ["long"]}}]}``.
Two conveniences over Chroma's own rules: a ``$and`` / ``$or`` with one clause is that clause, and a
dict with several fields means all of them (``{"user_id": "u", "bucket": "long"}``).

Callers name collections freely ("memories:my-app"); :func:`collection_name` maps each name to a valid
Chroma name (3-512 characters of ``[A-Za-z0-9_-]``, alphanumeric at both ends) that is deterministic and
unique per logical name: a readable prefix plus a hash of the whole name. Each Chroma collection records
its logical name in its metadata, so :meth:`VectorIndex.collections` can list them by logical prefix.

Partitions: Chroma 1.5.9 answers a query with a ``where`` filter in time linear in the collection's size,
whatever the filter matches (100 matching records of 20k: 16 ms; no filter: 1.6 ms). A caller whose
queries always name one owner (a user's memories, a session's) therefore keeps each owner in its own
collection, :func:`partition` ("memories:my-app" + ("alice", "long") ->
"memories%3Amy-app/alice/long"), and queries it without a filter. Partitions are ordinary collections:
created on the first upsert, a missing one answers [] (so nothing is created by a read), and every
partition of a collection is found again with ``collections(partition_prefix(name))``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import re
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import httpx

from sessionkit import reasons
from sessionkit.errors import FieldViolation, InvalidArgument

if TYPE_CHECKING:
    # chromadb takes over a second to import: a server that only answers state calls (the embedded
    # server's first call; bench/cold_start.py) never pays it. It is imported on the index thread
    # when the first memory or knowledge call connects.
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import PyEmbedding

MetadataValue = str | int | float | bool
Metadata = dict[str, MetadataValue]
Where = dict[str, Any]
T = TypeVar("T")
log = logging.getLogger("sessionkit.vector_index")

#: Seconds a Chroma server may take to answer one request before the index reports it unavailable.
SERVER_TIMEOUT = 30.0
#: The collection metadata key holding the caller's logical name (see :meth:`VectorIndex.collections`).
LOGICAL_NAME_KEY = "sessionkit_name"
#: Collection handles kept open per index. With one partition per user there are as many collections
#: as users: the least recently used handles are forgotten (and looked up again, ~0.2 ms, when needed).
MAX_CACHED_COLLECTIONS = 4096


@dataclass(frozen=True)
class Entry:
    """One stored item: its id, vector and metadata."""

    id: str
    vector: list[float]
    metadata: Metadata


class VectorIndex(abc.ABC):
    """Collections of (id, unit vector, metadata). Every method is safe to call from the event loop."""

    @abc.abstractmethod
    async def upsert(
        self, collection: str, ids: list[str], vectors: list[list[float]], metadatas: list[Metadata]
    ) -> None:
        """Insert or replace these ids (the collection is created on demand)."""

    @abc.abstractmethod
    async def delete(self, collection: str, ids: list[str]) -> None:
        """Delete these ids; ids (or a collection) that do not exist are ignored."""

    @abc.abstractmethod
    async def delete_where(self, collection: str, where: Where) -> None:
        """Delete every id whose metadata matches ``where`` (must not be empty: see :meth:`drop`)."""

    @abc.abstractmethod
    async def query(
        self, collection: str, vector: list[float], k: int, where: Where | None = None
    ) -> list[tuple[str, float]]:
        """Up to ``k`` (id, cosine similarity in [-1, 1]) nearest to ``vector``, best first;
        [] for an empty or missing collection."""

    async def query_many(
        self, collection: str, vectors: list[list[float]], k: int, where: Where | None = None
    ) -> list[list[tuple[str, float]]]:
        """:meth:`query` for each vector, in order (one round trip where the store allows it)."""
        return [await self.query(collection, vector, k, where) for vector in vectors]

    @abc.abstractmethod
    async def ids(self, collection: str, where: Where | None = None) -> set[str]:
        """Every id in the collection (matching ``where``); empty for a missing collection."""

    @abc.abstractmethod
    async def entries(self, collection: str, offset: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries from position ``offset`` (a stable order while nothing is written;
        [] past the end or for a missing collection): for copying a collection elsewhere."""

    @abc.abstractmethod
    async def exists(self, collection: str) -> bool:
        """Whether the collection exists (it may be empty)."""

    @abc.abstractmethod
    async def collections(self, prefix: str) -> list[str]:
        """The logical names of the existing collections that start with ``prefix``, sorted (e.g.
        every partition of a collection: ``collections(partition_prefix(name))``)."""

    @abc.abstractmethod
    async def drop(self, collection: str) -> None:
        """Delete the collection and everything in it (a missing one is fine)."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections and threads; idempotent."""


def collection_name(logical: str) -> str:
    """The Chroma collection name for a caller's logical name: ``sk-<readable part>-<hash>``."""
    digest = hashlib.sha256(logical.encode("utf-8")).hexdigest()[:16]
    readable = re.sub(r"[^A-Za-z0-9_-]+", "-", logical).strip("-_")[:64].strip("-_")
    return f"sk-{readable}-{digest}" if readable else f"sk-{digest}"


def partition(collection: str, *keys: str) -> str:
    """The logical name of the partition of ``collection`` for ``keys``, e.g. "memories:app" +
    ("alice", "long") -> "memories%3Aapp/alice/long". The collection and each key are percent-encoded
    and joined by "/", so distinct (collection, keys) never share a name ("a/b" + "c" vs "a" + "b/c")."""
    return "/".join(urllib.parse.quote(part, safe="") for part in (collection, *keys))


def partition_prefix(collection: str, *keys: str) -> str:
    """The prefix shared by the logical names of every partition of ``collection`` under ``keys``
    (for :meth:`VectorIndex.collections`)."""
    return partition(collection, *keys) + "/"


def chroma_where(where: Where | None) -> Where | None:
    """``where`` as Chroma accepts it (None for no filter). See the module docstring."""
    if not where:
        return None
    return _simplify(where)


def _simplify(where: Where) -> Where:
    if len(where) > 1:
        return {"$and": [_simplify({key: value}) for key, value in where.items()]}
    ((key, value),) = where.items()
    if key in ("$and", "$or") and isinstance(value, list):
        clauses = [_simplify(clause) for clause in value if clause]
        if len(clauses) == 1:
            return clauses[0]
        return {key: clauses}
    return where


class ChromaIndex(VectorIndex):
    """Chroma, embedded or a server. chromadb is synchronous and not safe to call concurrently, so every
    call runs on this index's own thread; the event loop only awaits it."""

    def __init__(
        self,
        connect: Callable[[], ClientAPI],
        location: str,
        unavailable: tuple[type[BaseException], ...] = (),
    ) -> None:
        """Prefer :meth:`embedded` and :meth:`server`. ``connect`` makes the client (called on the index
        thread on first use, and again after a failed attempt); ``unavailable`` are the exceptions that
        mean the store cannot be reached."""
        self._connect = connect
        self.location = location
        self._unavailable = unavailable
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessionkit-chroma")
        self._client: ClientAPI | None = None
        self._collections: OrderedDict[str, Collection] = OrderedDict()
        self._max_batch: int | None = None
        self._closed = False

    @classmethod
    def embedded(cls, path: Path) -> ChromaIndex:
        """Chroma in this process, persisted under ``path`` (created if needed)."""
        directory = Path(path).expanduser().resolve()

        def connect() -> ClientAPI:
            import chromadb
            from chromadb.config import Settings

            directory.mkdir(parents=True, exist_ok=True)
            return chromadb.PersistentClient(
                path=str(directory), settings=Settings(anonymized_telemetry=False)
            )

        return cls(connect, f"the embedded Chroma index at {directory}")

    @classmethod
    def server(
        cls, host: str, port: int, *, ssl: bool = False, timeout: float = SERVER_TIMEOUT
    ) -> ChromaIndex:
        """A Chroma server (``chroma run``). Nothing is contacted until the first call; a server that
        does not answer makes each call raise ``ServiceUnavailable`` naming host:port."""
        scheme = "https" if ssl else "http"

        def connect() -> ClientAPI:
            import chromadb
            from chromadb.config import Settings

            # chromadb's own HTTP session has no timeout (a hung server would hang this thread
            # forever), so probe with one first, then give the session one.
            httpx.get(f"{scheme}://{host}:{port}/api/v2/heartbeat", timeout=timeout).raise_for_status()
            client = chromadb.HttpClient(
                host=host, port=port, ssl=ssl, settings=Settings(anonymized_telemetry=False)
            )
            session = getattr(getattr(client, "_server", None), "_session", None)
            if isinstance(session, httpx.Client):
                session.timeout = httpx.Timeout(timeout)
            return client

        # ValueError: what chromadb raises when the server is down while creating its client.
        return cls(
            connect,
            f"the Chroma server at {host}:{port}",
            unavailable=(httpx.TransportError, httpx.HTTPStatusError, ValueError),
        )

    # -- running chromadb on the index thread --------------------------------------------------------

    async def _run(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise RuntimeError(f"{self.location} is closed")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn)
        except self._unavailable as error:
            if isinstance(error, ValueError) and self._client is not None:
                raise  # a real ValueError from a connected client (a bad argument), not "server down"
            raise reasons.VECTOR_INDEX_UNAVAILABLE.error(
                location=self.location, detail=error, metadata={"location": self.location}
            ) from error

    def _get_client(self) -> ClientAPI:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _batch_size(self) -> int:
        if self._max_batch is None:
            self._max_batch = max(1, int(self._get_client().get_max_batch_size()))
        return self._max_batch

    def _collection(self, logical: str, create: bool) -> Collection | None:
        name = collection_name(logical)
        collection = self._collections.get(name)
        if collection is not None:
            self._collections.move_to_end(name)
            return collection
        client = self._get_client()
        if create:
            collection = client.get_or_create_collection(
                name,
                embedding_function=None,
                configuration={"hnsw": {"space": "cosine"}},
                metadata={LOGICAL_NAME_KEY: logical},
            )
        else:
            from chromadb.errors import NotFoundError  # imported by the client already: cheap

            try:
                collection = client.get_collection(name, embedding_function=None)
            except NotFoundError:
                return None
        self._collections[name] = collection
        while len(self._collections) > MAX_CACHED_COLLECTIONS:
            self._collections.popitem(last=False)
        return collection

    def _on_collection(self, logical: str, create: bool, op: Callable[[Collection], T], missing: T) -> T:
        """``op`` on the collection (``missing`` if it does not exist and ``create`` is false). A cached
        collection dropped meanwhile (by another client of a shared server) is looked up once more, and
        so is one on which Chroma's core raised ``InternalError`` (e.g. a segment reader it could not
        open): a second failure of that kind is the index being unavailable, a retryable 503, not a
        500."""
        from chromadb.errors import InternalError, NotFoundError  # imported by the client already

        name = collection_name(logical)
        for attempt in range(2):
            collection = self._collection(logical, create)
            if collection is None:
                return missing
            try:
                return op(collection)
            except NotFoundError:
                self._collections.pop(name, None)
                if attempt:
                    raise
            except InternalError as error:
                self._collections.pop(name, None)
                if attempt:
                    log.warning("%s failed twice on %s: %s", self.location, logical, error)
                    raise reasons.VECTOR_INDEX_UNAVAILABLE.error(
                        location=self.location, detail=error, metadata={"location": self.location}
                    ) from error
        raise AssertionError("unreachable")

    # -- the interface -------------------------------------------------------------------------------

    async def upsert(
        self, collection: str, ids: list[str], vectors: list[list[float]], metadatas: list[Metadata]
    ) -> None:
        if not len(ids) == len(vectors) == len(metadatas):
            raise ValueError(
                f"upsert needs one vector and one metadata per id: "
                f"{len(ids)} ids, {len(vectors)} vectors, {len(metadatas)} metadatas"
            )
        if not ids:
            return
        # Chroma refuses an empty metadata dict; None means "no metadata".
        metas: list[Any] = [dict(m) if m else None for m in metadatas]
        rows: list[PyEmbedding] = list(vectors)

        def op(coll: Collection) -> None:
            size = self._batch_size()
            for start in range(0, len(ids), size):
                end = start + size
                coll.upsert(ids=ids[start:end], embeddings=rows[start:end], metadatas=metas[start:end])

        await self._run(lambda: self._on_collection(collection, True, op, None))

    async def delete(self, collection: str, ids: list[str]) -> None:
        if not ids:
            return

        def op(coll: Collection) -> None:
            size = self._batch_size()
            for start in range(0, len(ids), size):
                coll.delete(ids=ids[start : start + size])

        await self._run(lambda: self._on_collection(collection, False, op, None))

    async def delete_where(self, collection: str, where: Where) -> None:
        chroma = chroma_where(where)
        if chroma is None:
            raise ValueError("delete_where needs a filter (drop() deletes a whole collection)")

        def op(coll: Collection) -> None:
            coll.delete(where=chroma)

        await self._run(lambda: self._on_collection(collection, False, op, None))

    async def query(
        self, collection: str, vector: list[float], k: int, where: Where | None = None
    ) -> list[tuple[str, float]]:
        if k < 1:
            return []
        chroma = chroma_where(where)

        def op(coll: Collection) -> list[tuple[str, float]]:
            query: list[PyEmbedding] = [vector]
            result = coll.query(query_embeddings=query, n_results=k, where=chroma, include=["distances"])
            found = result["ids"][0] if result["ids"] else []
            distances = result["distances"][0] if result["distances"] else []
            # Cosine space: distance = 1 - cosine similarity.
            return [
                (found_id, max(-1.0, min(1.0, 1.0 - float(distance))))
                for found_id, distance in zip(found, distances, strict=True)
            ]

        return await self._run(lambda: self._on_collection(collection, False, op, []))

    async def query_many(
        self, collection: str, vectors: list[list[float]], k: int, where: Where | None = None
    ) -> list[list[tuple[str, float]]]:
        if k < 1 or not vectors:
            return [[] for _ in vectors]
        chroma = chroma_where(where)

        def op(coll: Collection) -> list[list[tuple[str, float]]]:
            queries: list[PyEmbedding] = list(vectors)
            result = coll.query(query_embeddings=queries, n_results=k, where=chroma, include=["distances"])
            found = result["ids"] or [[] for _ in vectors]
            distances = result["distances"] or [[] for _ in vectors]
            return [
                [(i, max(-1.0, min(1.0, 1.0 - float(d)))) for i, d in zip(ids, dist, strict=True)]
                for ids, dist in zip(found, distances, strict=True)
            ]

        return await self._run(lambda: self._on_collection(collection, False, op, [[] for _ in vectors]))

    async def ids(self, collection: str, where: Where | None = None) -> set[str]:
        chroma = chroma_where(where)

        def op(coll: Collection) -> set[str]:
            return set(coll.get(where=chroma, include=[])["ids"])

        return await self._run(lambda: self._on_collection(collection, False, op, set()))

    async def entries(self, collection: str, offset: int, limit: int) -> list[Entry]:
        if limit < 1:
            return []

        def op(coll: Collection) -> list[Entry]:
            got = coll.get(offset=offset, limit=limit, include=["embeddings", "metadatas"])
            embeddings = got["embeddings"] if got["embeddings"] is not None else []
            found_metadatas: list[Any] | None = got["metadatas"]
            metadatas = found_metadatas or [None] * len(got["ids"])
            return [
                Entry(i, [float(x) for x in vector], dict(meta or {}))
                for i, vector, meta in zip(got["ids"], embeddings, metadatas, strict=True)
            ]

        return await self._run(lambda: self._on_collection(collection, False, op, []))

    async def exists(self, collection: str) -> bool:
        return await self._run(lambda: self._collection(collection, False) is not None)

    async def collections(self, prefix: str) -> list[str]:
        def op() -> list[str]:
            names: list[str] = []
            client, offset, page = self._get_client(), 0, 1000
            while True:
                found = client.list_collections(limit=page, offset=offset)
                for coll in found:
                    logical = (coll.metadata or {}).get(LOGICAL_NAME_KEY)
                    if isinstance(logical, str) and logical.startswith(prefix):
                        names.append(logical)
                if len(found) < page:
                    return sorted(names)
                offset += page

        return await self._run(op)

    async def drop(self, collection: str) -> None:
        name = collection_name(collection)

        def op() -> None:
            from chromadb.errors import NotFoundError

            self._collections.pop(name, None)
            with contextlib.suppress(NotFoundError):
                self._get_client().delete_collection(name)

        await self._run(op)

    async def close(self) -> None:
        if self._closed:
            return

        def op() -> None:
            self._collections.clear()
            client, self._client = self._client, None
            if client is not None:
                close_chroma_client(client)

        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, op)
        finally:
            self._closed = True
            self._executor.shutdown(wait=False)


def close_chroma_client(client: ClientAPI) -> None:
    """Close a chromadb client and everything it holds. chromadb 1.5.9's ``Client.close()`` releases the
    embedded system but leaves an HttpClient's two HTTP sessions (its own and its admin client's) open
    (ResourceWarning: unclosed socket), so close those too."""
    for owner in (client, getattr(client, "_admin_client", None)):
        session = getattr(getattr(owner, "_server", None), "_session", None)
        if isinstance(session, httpx.Client):
            session.close()
    cast(Any, client).close()


def index_from_url(url: str, data_dir: Path) -> VectorIndex:
    """The vector index for a URL: "" or "embedded" = embedded Chroma in ``data_dir / "chroma"``;
    ``http://host:port`` (or https) = a Chroma server."""
    if url in ("", "embedded"):
        return ChromaIndex.embedded(Path(data_dir) / "chroma")
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = -1
    if (
        parsed.scheme in ("http", "https")
        and parsed.hostname
        and parsed.path in ("", "/")
        and not parsed.query
        and port != -1
    ):
        https = parsed.scheme == "https"
        return ChromaIndex.server(parsed.hostname, port or (443 if https else 8000), ssl=https)
    description = 'expected "", "embedded" or http://host:port'
    raise InvalidArgument(
        f"invalid vector index URL {url!r}: {description}",
        violations=[FieldViolation("vector_url", description)],
    )

"""ExtractMemories (memory_config provider "mem0"): the LLM (extraction.py) turns a conversation turn
into operations against the owner's related memories, applied here through the ordinary writes (so
dedup, merging, history and the outbox apply). An unusable answer stores the user's messages as they
are: the user's text is never lost."""

from __future__ import annotations

from sessionkit import reasons
from sessionkit.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from sessionkit_server.common.idempotency import Idempotency
from sessionkit_server.common.identity import Owner
from sessionkit_server.common.timestamps import now_us
from sessionkit_server.memory import tables as t
from sessionkit_server.memory.base import ExtractResult, JsonObject, Operation, content_hash, log
from sessionkit_server.memory.extraction import FactExtractor, MalformedOutput, Message, ProposedOperation
from sessionkit_server.memory.records import MemoryRecord
from sessionkit_server.memory.writes import MemoryWrites


class MemoryExtraction(MemoryWrites):
    async def extract(
        self,
        owner: Owner,
        messages: list[Message],
        memory_type: int = t.LONG,
        metadata: JsonObject | None = None,
        dry_run: bool = False,
        actor: str = "",
        idem: Idempotency[ExtractResult] | None = None,
        quality: float | None = None,
    ) -> ExtractResult:
        """Have the LLM turn a conversation turn into memory operations against the owner's related
        memories, and apply them through add/update/delete (so dedup, merging, history and the outbox
        apply; history actor ``llm:<model>`` unless ``actor`` is given). An unusable LLM answer (after
        its retries) stores the turn's user messages as they are, with metadata
        ``{"extraction": "failed"}``: the user's text is never lost.

        With ``idem`` the key is claimed before the LLM is asked: a repeat gets the first response
        (``Replayed``), a concurrent repeat waits (retryable ``ServiceUnavailable``) and nothing is
        applied twice."""
        extractor = self.extractor
        if extractor is None:
            raise reasons.EXTRACTION_UNAVAILABLE.error()
        turn = self._check_turn(messages)
        meta = self._check_metadata(metadata)
        # Every memory the extraction adds gets it (as an AddMemory's quality_score).
        quality = None if quality is None else self._check_quality(quality)
        await self._replay(owner, idem)
        if idem is not None:
            await self.store.claim(owner, idem.key, idem.method, now_us())
        done: list[Operation] = []
        try:
            result = await self._extract(
                extractor, owner, turn, memory_type, meta, quality, dry_run, actor, done
            )
        except BaseException:
            if idem is not None:
                if done and not dry_run:
                    # Part of the turn was applied: that part is the key's response, so a retry does not
                    # apply it again.
                    partial = ExtractResult(done, extractor.model)
                    await self.store.finish(owner, idem.key, idem.encode(partial))
                else:
                    await self.store.release(owner, idem.key)
            raise
        if idem is not None:
            await self.store.finish(owner, idem.key, idem.encode(result))
        return result

    async def _extract(
        self,
        extractor: FactExtractor,
        owner: Owner,
        turn: list[Message],
        memory_type: int,
        meta: JsonObject,
        quality: float | None,
        dry_run: bool,
        actor: str,
        done: list[Operation],
    ) -> ExtractResult:
        actor = actor or f"llm:{extractor.model}"
        related = await self._related(owner, turn, memory_type)
        by_id = {m.id: m for m in related}
        try:
            proposals = await extractor.extract(
                turn, [(m.id, m.text) for m in related], self.settings.max_text_bytes
            )
        except MalformedOutput as failure:
            log.warning(
                "extraction skipped: %s gave no usable answer in %d attempts; the user's messages are "
                "stored as they are (metadata extraction=failed)",
                extractor.model,
                failure.attempts,
                extra={
                    "model": extractor.model,
                    "attempts": failure.attempts,
                    "problems": failure.problems,
                    "app_name": owner.app_name,
                    "user_id": owner.user_id,
                },
            )
            await self._store_unextracted(owner, turn, memory_type, meta, quality, dry_run, done)
            return ExtractResult(done, extractor.model, failed=True)
        for proposal in proposals:
            operation = await self._apply(owner, proposal, by_id, memory_type, meta, quality, dry_run, actor)
            if operation is not None:
                done.append(operation)
        return ExtractResult(done, extractor.model)

    async def _related(self, owner: Owner, turn: list[Message], memory_type: int) -> list[MemoryRecord]:
        """The owner's memories of ``memory_type`` closest to the turn (what the LLM may change)."""
        said = [m.content for m in turn if m.role == "user"] or [m.content for m in turn]
        query = _truncate("\n".join(said), self.settings.max_text_bytes)
        if not query.strip():
            return []
        hits = await self.search(owner, query, memory_type, self.settings.extraction_context)
        return [hit.memory for hit in hits]

    async def _store_unextracted(
        self,
        owner: Owner,
        turn: list[Message],
        memory_type: int,
        meta: JsonObject,
        quality: float | None,
        dry_run: bool,
        done: list[Operation],
    ) -> None:
        """The fallback of an unusable LLM answer: each user message stored as it is (never merged into
        another memory, which would drop its text)."""
        failed_meta: JsonObject = {**meta, "extraction": "failed"}
        for message in turn:
            if message.role != "user" or not message.content.strip():
                continue
            if dry_run:
                done.append(
                    Operation("ADD", message.content, self._preview(owner, memory_type, message.content))
                )
                continue
            added = await self.add(
                owner, message.content, memory_type, quality, failed_meta, "extractor", skip_merge=True
            )
            done.append(Operation("NONE" if added.deduplicated else "ADD", message.content, added.memory))

    async def _apply(
        self,
        owner: Owner,
        proposal: ProposedOperation,
        shown: dict[str, MemoryRecord],
        memory_type: int,
        meta: JsonObject,
        quality: float | None,
        dry_run: bool,
        actor: str,
    ) -> Operation | None:
        fact = proposal.fact
        if proposal.type == "ADD":
            if dry_run:
                return Operation("ADD", fact, self._preview(owner, memory_type, fact))
            added = await self.add(owner, fact, memory_type, quality, meta, actor)
            # Already stored (exactly, or merged into a near-duplicate): the fact was known.
            kind = "NONE" if added.deduplicated or added.merged else "ADD"
            return Operation(kind, fact, added.memory)
        current = shown.get(proposal.memory_id)
        if proposal.type == "NONE":
            return Operation("NONE", fact, current)
        if current is None:  # parse_operations lets only the ids it showed through; never act on others
            log.warning(
                "extraction: not applied, the memory was not shown to the LLM",
                extra={"memory_id": proposal.memory_id, "operation": proposal.type},
            )
            return None
        if proposal.type == "UPDATE":
            if content_hash(fact) == current.content_hash:
                return Operation("NONE", fact, current)
            if dry_run:
                preview = MemoryRecord(
                    **{**current.__dict__, "text": fact, "content_hash": content_hash(fact)}
                )
                return Operation("UPDATE", fact, preview, current.text)
            try:
                updated = await self.update(owner, current.id, text=fact, actor=actor)
            except NotFound:
                log.warning("extraction: memory gone before its UPDATE", extra={"memory_id": current.id})
                return None
            except AlreadyExists:
                # Another memory of the scope already says exactly this: the fact is known.
                same = await self._same_content(owner, memory_type, content_hash(fact))
                return Operation("NONE", fact, same)
            return Operation("UPDATE", fact, updated, current.text)
        # DELETE
        if dry_run:
            return Operation("DELETE", fact, current)
        if not await self.delete(owner, current.id, allow_missing=True, actor=actor):
            log.warning("extraction: memory gone before its DELETE", extra={"memory_id": current.id})
            return None
        return Operation("DELETE", fact, current)

    def _preview(self, owner: Owner, memory_type: int, text: str) -> MemoryRecord:
        """What a dry run's ADD would store (no id: nothing is stored)."""
        now = now_us()
        return MemoryRecord(
            "", owner.app_name, owner.user_id, owner.session_id, memory_type, text.strip(),
            content_hash(text), 0.5, {}, now, now, None, 0,
        )  # fmt: skip

    def _check_turn(self, messages: list[Message]) -> list[Message]:
        if not messages:
            raise InvalidArgument(
                "no messages to extract memories from",
                violations=[FieldViolation("messages", "at least one message")],
            )
        if len(messages) > self.settings.max_turn_messages:
            raise InvalidArgument(
                "too many messages",
                violations=[FieldViolation("messages", f"at most {self.settings.max_turn_messages}")],
            )
        total = 0
        for n, message in enumerate(messages):
            if not message.role.strip():
                raise InvalidArgument(
                    "a message has no role",
                    violations=[FieldViolation(f"messages[{n}].role", "must not be empty")],
                )
            if "\x00" in message.content:
                raise InvalidArgument(
                    "invalid message", violations=[FieldViolation(f"messages[{n}].content", "contains NUL")]
                )
            size = len(message.content.encode())
            if size > self.settings.max_text_bytes:
                raise InvalidArgument(
                    "a message is too long",
                    violations=[
                        FieldViolation(
                            f"messages[{n}].content", f"{size} bytes; at most {self.settings.max_text_bytes}"
                        )
                    ],
                )
            total += size
        if total > self.settings.max_turn_bytes:
            raise InvalidArgument(
                "the conversation turn is too long",
                violations=[
                    FieldViolation("messages", f"{total} bytes; at most {self.settings.max_turn_bytes}")
                ],
            )
        if not any(m.content.strip() for m in messages):
            raise InvalidArgument(
                "every message is empty", violations=[FieldViolation("messages", "some text is needed")]
            )
        return [Message(m.role.strip(), m.content, m.name) for m in messages]


def _truncate(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` bytes of UTF-8, on a character boundary."""
    return text.encode()[:max_bytes].decode(errors="ignore")

"""DynamicBatcher and its rules: token-budgeted batches, fair turns, cancellation, failures, back-pressure, shutdown.

The backend is a recording fake (the one fake these tests allow: no model, no GPU). Everything else is
real: the batcher's worker and executor thread, and a ``ServerMetrics`` with its own registry. Tests order
events by what the fake saw and by the batcher's state, never by sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from benchlib.engine_path import micro_batches
from rerankd.engine.backends.base import BackendInfo, ScoringBackend, TokenGroup
from rerankd.engine.batcher import DynamicBatcher
from rerankd.engine.batching import Turn, WaitingRows, cut_batch, dispatch_order, service_order
from rerankd.engine.bulk import thread_nice
from rerankd.engine.engine import RerankEngine
from rerankd.engine.prompt import PromptBuilder
from rerankd.errors import NotReadyError, OverloadedError
from rerankd.observability.metrics import ServerMetrics

DEADLINE_S = 10.0


class RecordingBackend:
    """Records every batch it is given and scores a tail as its first token, so a score names its document.

    ``hold()`` makes forwards wait in the worker thread until ``release()``; ``hold_bulk()`` only those on the
    bulk lane's thread. A batch holding a group whose shared prefix is ``poison`` raises, as a failed forward
    pass does. ``threads``: the name and nice value of the thread each batch ran on.
    """

    info = BackendInfo(name="recording", device="cpu", dtype="float32", max_model_len=4096)

    def __init__(self, poison: list[int] | None = None) -> None:
        self.batches: list[list[TokenGroup]] = []
        self.poison = poison
        self._open = threading.Event()
        self._open.set()
        self._bulk_open = threading.Event()
        self._bulk_open.set()
        self.threads: list[tuple[str, int]] = []
        self._loop = asyncio.get_running_loop()
        self._arrived: asyncio.Queue[list[TokenGroup]] = asyncio.Queue()

    def hold(self) -> None:
        self._open.clear()

    def hold_bulk(self) -> None:
        self._bulk_open.clear()

    def release(self) -> None:
        self._open.set()
        self._bulk_open.set()

    def score(self, groups: list[TokenGroup]) -> list[list[float]]:
        self.batches.append(groups)
        name = threading.current_thread().name
        self.threads.append((name, thread_nice()))
        self._loop.call_soon_threadsafe(self._arrived.put_nowait, groups)
        gate = self._bulk_open if name.startswith("rerankd-bulk") else self._open
        if not gate.wait(timeout=DEADLINE_S):
            raise TimeoutError("the test never released the backend")
        if self.poison is not None and any(g.shared == self.poison for g in groups):
            raise RuntimeError("forward pass failed")
        return [[float(tail[0]) for tail in g.tails] for g in groups]

    def close(self) -> None:
        pass

    def batch_of(self, doc_id: int) -> int:
        """The index of the first batch that scored document ``doc_id``."""
        return next(n for n, batch in enumerate(self.seen()) if any(doc_id in ids for _, ids in batch))

    async def next_batch(self) -> list[tuple[int, list[int]]]:
        """The next batch to reach the backend, as soon as it does, in :func:`shape`."""
        return shape(await asyncio.wait_for(self._arrived.get(), DEADLINE_S))

    def seen(self) -> list[list[tuple[int, list[int]]]]:
        return [shape(b) for b in self.batches]


def shape(groups: list[TokenGroup]) -> list[tuple[int, list[int]]]:
    """A batch as (request tag, document ids) per group: the tag is the prefix's token, an id a tail's."""
    return [(g.shared[0], [tail[0] for tail in g.tails]) for g in groups]


def request(tag: int, prefix: int, *docs: tuple[int, int]) -> tuple[list[int], list[list[int]]]:
    """A request whose shared prefix is ``prefix`` tokens of ``tag``; each doc (id, length) is ``length`` × id."""
    return [tag] * prefix, [[doc_id] * length for doc_id, length in docs]


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def running(backend: RecordingBackend, *, max_batch_tokens: int = 1000, max_queue: int = 16,
                  fill_tokens: int | None = None, bulk_nice: int = 0) -> AsyncIterator[DynamicBatcher]:
    batcher = DynamicBatcher(backend, max_batch_tokens=max_batch_tokens, max_queue=max_queue, metrics=ServerMetrics(),
                             fill_tokens=fill_tokens, bulk_nice=bulk_nice)
    batcher.start()
    try:
        yield batcher
    finally:
        backend.release()
        await batcher.close()


async def on_the_model(batcher: DynamicBatcher, backend: RecordingBackend,
                       request: tuple[list[int], list[list[int]]]) -> asyncio.Task[list[float]]:
    """Submit ``request`` with the backend held; return once its first batch is on the model."""
    backend.hold()
    task = asyncio.create_task(batcher.submit(*request))
    await backend.next_batch()
    return task


async def queued(batcher: DynamicBatcher, request: tuple[list[int], list[list[int]]],
                 tenant: str | None = None, priority: int = 0) -> asyncio.Task[list[float]]:
    """Submit ``request``; return once it waits in the queue."""
    before = batcher.waiting
    task = asyncio.create_task(batcher.submit(*request, tenant=tenant, priority=priority))
    await wait_until(lambda: batcher.waiting == before + 1, "the request waits in the queue")
    return task


def sample(batcher: DynamicBatcher, name: str, **labels: str) -> float | None:
    return batcher.metrics.registry.get_sample_value(name, labels)


# ------------------------------------------------------------------------------------------- the cut rule
def test_dispatch_order_is_shortest_first_and_stable() -> None:
    assert dispatch_order([[0] * 5, [0], [0] * 3, [0]]) == [1, 3, 2, 0]


def test_rows_are_admitted_while_padded_rows_fit_the_budget() -> None:
    # width = prefix 2 + tail 3 = 5; costs: 5 + 2 (the prefix, counted on the first row), 2 × 5, 3 × 5, 4 × 5
    rows = WaitingRows(prefix=2, lengths=[3, 3, 3, 3])
    assert cut_batch([rows], 15) == [3]  # a batch costing exactly the budget is admitted
    assert cut_batch([rows], 14) == [2]
    assert cut_batch([rows], 20) == [4]


def test_the_widest_row_sets_the_width_of_every_row() -> None:
    rows = WaitingRows(prefix=0, lengths=[1, 1, 8])  # the third row makes the batch 3 rows × 8
    assert cut_batch([rows], 23) == [2]
    assert cut_batch([rows], 24) == [3]


def test_the_first_row_is_admitted_whatever_it_costs() -> None:
    assert cut_batch([WaitingRows(prefix=10, lengths=[100, 1])], 1) == [1]
    # Only a batch's first row: a later request's first row is weighed like any other.
    assert cut_batch([WaitingRows(0, [5]), WaitingRows(0, [100])], 10) == [1, 0]


def test_each_request_adds_its_shared_prefix_once() -> None:
    queue = [WaitingRows(prefix=4, lengths=[1]), WaitingRows(prefix=4, lengths=[1])]
    # A: 1 × 5 + 4; with B: 2 × 5 + A's prefix 4 + B's prefix 4 = 18
    assert cut_batch(queue, 18) == [1, 1]
    assert cut_batch(queue, 17) == [1, 0]


def test_a_later_request_never_jumps_ahead_to_fill_the_budget() -> None:
    queue = [WaitingRows(0, [5]), WaitingRows(0, [100]), WaitingRows(0, [1])]
    assert cut_batch(queue, 20) == [1, 0]  # the third request's row would fit, but waits behind the second


def test_the_cut_continues_where_earlier_batches_stopped_and_reads_no_further() -> None:
    def queue() -> Iterator[WaitingRows]:
        yield WaitingRows(1, [2], start=1)  # every row already dispatched: passed over
        yield WaitingRows(1, [2, 2, 2, 2], start=1)
        raise AssertionError("read past the request the cut fell in")

    assert cut_batch(queue(), 6) == [0, 2]  # rows 2 and 3 of the second request: 2 × 3, its prefix once


def test_service_order_puts_a_request_never_served_before_one_served() -> None:
    big = Turn(tenant=None, last_served=7, arrived=0)
    small = Turn(tenant=None, last_served=-1, arrived=1)
    assert service_order([big, small], {None: 7}) == [1, 0]
    # Among requests never served (or served in the same batch), arrival order stands.
    assert service_order([Turn(None, -1, 0), Turn(None, -1, 1), Turn(None, -1, 2)], {}) == [0, 1, 2]


def test_service_order_interleaves_tenants_least_recently_served_first() -> None:
    turns = [Turn("a", -1, 0), Turn("a", -1, 1), Turn("a", -1, 2), Turn("b", -1, 3), Turn("b", -1, 4)]
    assert service_order(turns, {"a": 3, "b": 2}) == [3, 0, 4, 1, 2]  # b was served longer ago: b first
    assert service_order(turns, {}) == [0, 3, 1, 4, 2]  # neither served yet: the earlier arrival first
    # Within a tenant, its own requests take turns too.
    assert service_order([Turn("a", 5, 0), Turn("a", -1, 1)], {"a": 5}) == [1, 0]


def test_a_first_turn_takes_rows_under_way_only_up_to_the_fill() -> None:
    small = WaitingRows(2, [3])  # 5 wide with its prefix, first turn
    bulk = WaitingRows(2, [3] * 20, start=4)  # under way
    assert cut_batch([small, bulk], 50) == [1, 8]  # no fill given: the whole budget (9 rows × 5 + 2 prefixes)
    assert cut_batch([small, bulk], 50, fill_tokens=15) == [1, 1]  # 2 rows × 5 + 4 fits 15; a 3rd costs 19
    assert cut_batch([small, bulk], 50, fill_tokens=1) == [1, 0]
    # The fill binds only rows under way in a batch holding a first turn: not another first turn, not bulk alone.
    assert cut_batch([small, WaitingRows(2, [3] * 20)], 50, fill_tokens=15) == [1, 8]
    assert cut_batch([bulk], 50, fill_tokens=15) == [10]
    # The first row of a batch runs whatever it costs, under way or not.
    assert cut_batch([WaitingRows(2, [3] * 20, start=1)], 50, fill_tokens=1) == [10]


def test_service_order_puts_first_turns_before_requests_under_way_whoever_was_served_last() -> None:
    under_way = Turn("bulk", last_served=4, arrived=0)
    first = Turn("small", last_served=-1, arrived=1)
    assert service_order([under_way, first], {"bulk": 3, "small": 4}) == [1, 0]


def test_service_order_is_by_priority_first_lower_first_then_round_robin() -> None:
    turns = [Turn("a", -1, 0, priority=1), Turn("b", -1, 1, priority=0), Turn("a", -1, 2, priority=0),
             Turn("c", -1, 3, priority=-5), Turn("b", -1, 4, priority=0)]
    # -5, then the priority-0 requests round robin (b and a take turns), then priority 1.
    assert service_order(turns, {"b": 2, "a": 1}) == [3, 2, 1, 4, 0]
    # A request under way of a lower value still goes before a first turn of a higher value: strict.
    assert service_order([Turn("a", -1, 0, priority=1), Turn("b", 3, 1, priority=0)], {}) == [1, 0]
    assert Turn("a", -1, 0).priority == 0


# ---------------------------------------------------------------------------------------------- the batcher
async def test_rows_go_shortest_first_and_scores_come_back_in_document_order() -> None:
    backend = RecordingBackend()
    async with running(backend) as batcher:
        scores = await batcher.submit(*request(1, 2, (40, 5), (41, 1), (42, 3)))
    assert scores == [40.0, 41.0, 42.0]
    assert backend.seen() == [[(1, [41, 42, 40])]]
    assert sample(batcher, "rerankd_pairs_total") == 3
    assert sample(batcher, "rerankd_queue_time_seconds_count") == 1


def load(batcher: DynamicBatcher) -> tuple[float | None, ...]:
    """(waiting, running, in-flight tokens, utilisation): what an endpoint picker scrapes."""
    names = ("rerankd_queue_depth", "rerankd_requests_running", "rerankd_inflight_tokens",
             "rerankd_token_utilization_ratio")
    return tuple(sample(batcher, name) for name in names)


async def test_the_picker_gauges_follow_waiting_running_and_the_tokens_ahead() -> None:
    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=40) as batcher:
        a = await on_the_model(batcher, backend, request(1, 2, (10, 3)))  # one row: 2 + 3 tokens
        assert load(batcher) == (0, 1, 5, 5 / 40)
        b = await queued(batcher, request(2, 1, (20, 2), (21, 2)))  # two rows of 1 + 2
        assert load(batcher) == (1, 1, 11, 11 / 40)
        c = await queued(batcher, request(3, 1, (30, 49)))  # more than a pass ahead: the gauge stops at 1
        assert load(batcher) == (2, 1, 61, 1.0)
        c.cancel()  # a client gone is no load
        await wait_until(lambda: load(batcher)[0] == 1, "the cancelled request leaves the gauges")
        assert load(batcher) == (1, 1, 11, 11 / 40)
        backend.release()
        assert await a == [10.0] and await b == [20.0, 21.0]
        assert load(batcher) == (0, 0, 0, 0.0)


class SteppedBackend(RecordingBackend):
    """Runs one forward pass per ``step()``: a request's passes can be watched one at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._permits = threading.Semaphore(0)

    def step(self) -> None:
        self._permits.release()

    def score(self, groups: list[TokenGroup]) -> list[list[float]]:
        if not self._permits.acquire(timeout=DEADLINE_S):
            raise TimeoutError("the test never stepped the backend")
        return super().score(groups)


async def test_the_tokens_ahead_shrink_as_a_requests_passes_are_answered() -> None:
    backend = SteppedBackend()
    async with running(backend, max_batch_tokens=40) as batcher:
        task = asyncio.create_task(batcher.submit(*request(1, 1, (10, 30), (11, 30))))  # one row per pass
        await wait_until(lambda: load(batcher)[1] == 1, "the first pass is cut")
        assert load(batcher) == (0, 1, 62, 1.0)
        backend.step()
        await backend.next_batch()  # the first pass ran; its row's answer leaves the tokens ahead
        await wait_until(lambda: load(batcher)[2] != 62, "the first pass is answered")
        assert load(batcher) == (0, 1, 31, 31 / 40)
        backend.step()
        assert await task == [10.0, 11.0]
        assert load(batcher) == (0, 0, 0, 0.0)


async def test_requests_are_served_first_in_first_out() -> None:
    backend = RecordingBackend()
    async with running(backend) as batcher:
        a = await on_the_model(batcher, backend, request(1, 2, (10, 3)))
        b = await queued(batcher, request(2, 2, (20, 3), (21, 3)))
        c = await queued(batcher, request(3, 2, (30, 3)))
        backend.release()
        assert await a == [10.0] and await b == [20.0, 21.0] and await c == [30.0]
    assert backend.seen() == [[(1, [10])], [(2, [20, 21]), (3, [30])]]
    assert sample(batcher, "rerankd_batch_requests_count") == 2


async def test_a_small_request_behind_a_large_one_runs_in_the_next_batch() -> None:
    backend = RecordingBackend()
    # Rows 5 tokens wide, 50 a batch: the 1000-row request takes 100 batches; the 1-row one must not wait for them.
    async with running(backend, max_batch_tokens=50) as batcher:
        large = await on_the_model(batcher, backend, request(1, 2, *[(1000 + i, 3) for i in range(1000)]))
        small = await queued(batcher, request(2, 2, (7, 3)))
        backend.release()
        assert await small == [7.0]
        assert len(await large) == 1000
    assert backend.batch_of(7) == 1  # the batch right after the one running when it arrived
    assert backend.batch_of(1999) >= 100  # 10 rows a batch


async def test_two_tenants_take_turns_whoever_queued_more() -> None:
    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=1) as batcher:  # one row per forward pass
        backend.hold()
        plug = asyncio.create_task(batcher.submit(*request(9, 2, (90, 3)), tenant="a"))
        await backend.next_batch()
        tasks = [await queued(batcher, request(1, 2, (10 + i, 3)), "a") for i in range(3)]
        tasks += [await queued(batcher, request(2, 2, (20 + i, 3)), "b") for i in range(3)]
        backend.release()
        await asyncio.gather(plug, *tasks)
    # b was never served, a just was (the plug): b first, then one each, though a queued all of its three first.
    assert [ids for batch in backend.seen() for _, ids in batch] == [[90], [20], [10], [21], [11], [22], [12]]


async def test_a_small_request_runs_in_a_short_pass_not_one_filled_with_bulk_rows() -> None:
    backend = RecordingBackend()
    # Rows 5 tokens wide, 50 a batch, so fill_tokens is 50 // 8 = 6: no bulk row joins the small one's pass.
    async with running(backend, max_batch_tokens=50) as batcher:
        assert batcher.fill_tokens == 6
        large = await on_the_model(batcher, backend, request(1, 2, *[(1000 + i, 3) for i in range(100)]))
        small = await queued(batcher, request(2, 2, (7, 3)))
        backend.release()
        assert await small == [7.0]
        assert len(await large) == 100
    seen = backend.seen()
    assert seen[1] == [(2, [7])]  # alone, not padded out with nine bulk rows
    assert seen[2] == [(1, list(range(1010, 1020)))]  # the bulk rows carry on in full passes


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
async def test_with_a_bulk_lane_a_small_request_is_answered_while_a_bulk_pass_is_still_running() -> None:
    backend = RecordingBackend()
    backend.hold_bulk()
    # Rows 5 tokens wide, 50 a batch: 100 rows (500 tokens) are bulk, one row (5 tokens) is not.
    async with running(backend, max_batch_tokens=50, bulk_nice=3) as batcher:
        large = asyncio.create_task(batcher.submit(*request(1, 2, *[(1000 + i, 3) for i in range(100)])))
        assert (await backend.next_batch())[0][0] == 1  # a bulk pass is on the model, and stays there
        assert await batcher.submit(*request(2, 2, (7, 3))) == [7.0]  # answered beside it, not after it
        assert not large.done()
        backend.release()
        assert len(await large) == 100
    own = thread_nice()
    lanes = {name.split("_")[0]: nice for name, nice in backend.threads}
    assert lanes == {"rerankd-bulk-forward": own + 3, "rerankd-forward": own}, backend.threads
    assert [name.startswith("rerankd-bulk") for name, _ in backend.threads].count(False) == 1  # the small one


async def test_a_request_that_fits_one_pass_stays_in_the_interactive_lane() -> None:
    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=50, bulk_nice=3) as batcher:
        assert await batcher.submit(*request(1, 2, *[(10 + i, 3) for i in range(10)])) == [10.0 + i for i in range(10)]
    assert [name.split("_")[0] for name, _ in backend.threads] == ["rerankd-forward"]  # 50 tokens: one pass


async def test_lower_priority_values_are_served_first_and_equal_ones_take_turns() -> None:
    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=1) as batcher:  # one row per forward pass
        plug = await on_the_model(batcher, backend, request(9, 2, (90, 3)))
        tasks = [await queued(batcher, request(1, 2, (10, 3), (11, 3)), "a", priority=1),
                 await queued(batcher, request(2, 2, (20, 3)), "b", priority=0),
                 await queued(batcher, request(3, 2, (30, 3)), "a"),
                 await queued(batcher, request(4, 2, (40, 3), (41, 3)), "c", priority=-1)]
        backend.release()
        await asyncio.gather(plug, *tasks)
    # -1 first (both rows), then the two of priority 0 (b and a take turns by arrival), then priority 1.
    assert [ids for batch in backend.seen() for _, ids in batch] == [[90], [40], [41], [20], [30], [10], [11]]


async def test_the_engine_passes_tenant_and_priority_to_the_batcher(tiny_model_dir: Path) -> None:
    from rerankd.protocol import RerankTask

    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=1) as batcher:
        metrics = batcher.metrics
        engine = RerankEngine(PromptBuilder(AutoTokenizer.from_pretrained(tiny_model_dir), 256), batcher,
                              backend.info, metrics, max_request_tokens=10_000)
        plug = await on_the_model(batcher, backend, request(9, 2, (90, 3)))
        later = asyncio.create_task(engine.score_all([RerankTask(query="later", documents=["x"])], "a", priority=1))
        await wait_until(lambda: batcher.waiting == 1, "the priority-1 request waits")
        sooner = asyncio.create_task(engine.score(RerankTask(query="sooner", documents=["y"]), tenant="b",
                                                  priority=0))
        await wait_until(lambda: batcher.waiting == 2, "the priority-0 request waits")
        backend.release()
        await asyncio.gather(plug, later, sooner)
    prompts = [AutoTokenizer.from_pretrained(tiny_model_dir).decode(g.shared + g.tails[0])
               for batch in backend.batches[1:] for g in batch]
    assert ["sooner" in p for p in prompts] == [True, False]


async def test_a_cut_inside_a_request_continues_in_the_next_batch() -> None:
    backend = RecordingBackend()
    # Every prompt is 5 tokens wide: 3 rows cost 15; the 4th row of `a` opens the next batch, which `b` joins
    # (b's first turn goes first; a fill of the whole budget lets a's row join it).
    async with running(backend, max_batch_tokens=15, fill_tokens=15) as batcher:
        plug = await on_the_model(batcher, backend, request(9, 2, (90, 3)))
        a = await queued(batcher, request(1, 2, (10, 3), (11, 3), (12, 3), (13, 3)))
        b = await queued(batcher, request(2, 2, (20, 3)))
        backend.release()
        assert await a == [10.0, 11.0, 12.0, 13.0] and await b == [20.0]
        await plug
    assert backend.seen() == [[(9, [90])], [(1, [10, 11, 12])], [(1, [13]), (2, [20])]]
    assert [ids for _, ids in backend.seen()[2]] == [[13], [20]]  # groups in arrival order, whoever went first


async def test_the_first_row_of_a_batch_runs_even_when_it_alone_exceeds_the_budget() -> None:
    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=4) as batcher:
        assert await batcher.submit(*request(1, 2, (10, 10), (11, 12))) == [10.0, 11.0]
    assert backend.seen() == [[(1, [10])], [(1, [11])]]


async def test_one_request_is_cut_as_the_benchmarks_cut_it() -> None:
    shared, tails = request(1, 6, *[(10 + i, n) for i, n in enumerate((17, 3, 9, 30, 3, 12, 25, 8, 1, 40))])
    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=90) as batcher:
        await batcher.submit(shared, tails)
    bench = [[(1, [tails[i][0] for i in indices])] for indices, _ in micro_batches(shared, tails, 90)]
    assert backend.seen() == bench and len(bench) > 2


async def test_a_cancelled_request_computes_nothing_more() -> None:
    backend = RecordingBackend()
    async with running(backend, max_batch_tokens=1) as batcher:  # one row per forward pass
        a = await on_the_model(batcher, backend, request(1, 2, (10, 3), (11, 3), (12, 3), (13, 3)))
        a.cancel()  # the client went away while its first row is on the model
        with pytest.raises(asyncio.CancelledError):
            await a
        b = asyncio.create_task(batcher.submit(*request(2, 2, (20, 3))))
        backend.release()
        assert await b == [20.0]
    # Had a's rows stayed queued, 11, 12 and 13 would have reached the backend before b's.
    assert backend.seen() == [[(1, [10])], [(2, [20])]]
    assert sample(batcher, "rerankd_cancelled_requests_total") == 1


async def test_a_request_cancelled_while_waiting_never_reaches_the_backend() -> None:
    backend = RecordingBackend()
    async with running(backend) as batcher:
        a = await on_the_model(batcher, backend, request(1, 2, (10, 3)))
        b = await queued(batcher, request(2, 2, (20, 3)))
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        assert batcher.waiting == 0  # its place in the queue is free at once
        c = asyncio.create_task(batcher.submit(*request(3, 2, (30, 3))))
        backend.release()
        assert await a == [10.0] and await c == [30.0]
    assert backend.seen() == [[(1, [10])], [(3, [30])]]


async def test_a_backend_error_fails_only_its_own_requests() -> None:
    backend = RecordingBackend(poison=[1, 1])
    async with running(backend, max_batch_tokens=1) as batcher:
        a = await on_the_model(batcher, backend, request(1, 2, (10, 3), (11, 3)))
        b = await queued(batcher, request(2, 2, (20, 3)))
        backend.release()
        with pytest.raises(RuntimeError, match="forward pass failed"):
            await a
        assert await b == [20.0]  # the worker survived the failure
    assert backend.seen() == [[(1, [10])], [(2, [20])]]  # the failed request's second row was dropped
    assert sample(batcher, "rerankd_errors_total", type="backend") == 1


async def test_a_full_queue_answers_overloaded() -> None:
    backend = RecordingBackend()
    async with running(backend, max_queue=1) as batcher:
        a = await on_the_model(batcher, backend, request(1, 2, (10, 3)))  # no longer waiting
        b = await queued(batcher, request(2, 2, (20, 3)))
        with pytest.raises(OverloadedError, match="queue is full") as refused:
            await batcher.submit(*request(3, 2, (30, 3)))
        assert refused.value.status_code == 503 and refused.value.retry_after
        backend.release()
        assert await a == [10.0] and await b == [20.0]
    assert backend.seen() == [[(1, [10])], [(2, [20])]]


async def test_close_fails_what_waits_and_refuses_new_requests() -> None:
    backend = RecordingBackend()
    async with running(backend) as batcher:
        a = await on_the_model(batcher, backend, request(1, 2, (10, 3)))
        b = await queued(batcher, request(2, 2, (20, 3)))
        closing = asyncio.create_task(batcher.close())
        for pending in (a, b):
            with pytest.raises(NotReadyError, match="shutting down") as refused:
                await pending
            assert refused.value.status_code == 503
        with pytest.raises(NotReadyError):
            await batcher.submit(*request(3, 2, (30, 3)))
        assert not closing.done()  # close waits for the forward pass still on the model, off the event loop
        backend.release()
        await asyncio.wait_for(closing, DEADLINE_S)
    assert backend.seen() == [[(1, [10])]]


def test_the_fake_is_a_scoring_backend() -> None:
    async def build() -> RecordingBackend:
        return RecordingBackend()

    assert isinstance(asyncio.run(build()), ScoringBackend)

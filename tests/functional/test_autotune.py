"""``"auto"``'s measurement on CUDA, exercised on CPU: fake timings decide, once per shape
class; overrides skip it; the real probe leaves the global random stream alone; under
torch.distributed (a 2-process gloo group) rank 0's choice is every rank's."""

import multiprocessing
import os
import warnings

import pytest
import torch

from attnblocks.functional import (
    _autotune,
    _sdpa,
    attention_backend,
    last_attention_backend,
    position,
    position_attention,
    select_position_backend,
    set_attention_backend,
)
from attnblocks.functional._autotune import Candidate
from tests.reference import relative_error


def qkv(positions, requires_grad=False, batch=1, key_dim=4, value_dim=16):
    gen = torch.Generator().manual_seed(positions)
    shapes = [(batch, positions, key_dim), (batch, positions, key_dim),
              (batch, positions, value_dim)]  # fmt: skip
    return [torch.randn(s, generator=gen).requires_grad_(requires_grad) for s in shapes]


class FakeProbe:
    """A probe runner whose candidates take the given fake seconds on a fake clock."""

    def __init__(self, seconds):
        self.seconds = seconds  # label -> seconds (missing: cannot run)
        self.now = 0.0
        self.runs = []  # (label, shapes of the inputs it was built for)

    def runner(self, query, key, value, training, chunk_size):
        def run(candidate):
            self.runs.append((candidate.label, tuple(query.shape), training))
            if candidate.label not in self.seconds:
                return False
            self.now += self.seconds[candidate.label]
            return True

        return run

    def clock(self):
        return self.now


@pytest.fixture
def probe_on_cpu(monkeypatch):
    """Let "auto" measure on CPU as it does on CUDA, with fake timings."""
    monkeypatch.setattr(_autotune, "PROBED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(_autotune, "_DECIDED", {})
    monkeypatch.setattr(_autotune, "_TIMINGS", {})
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
    monkeypatch.delenv("ATTNBLOCKS_BACKEND", raising=False)

    def install(seconds):
        fake = FakeProbe(seconds)
        monkeypatch.setattr(position, "_probe_runner", fake.runner)
        monkeypatch.setattr(_autotune, "_clock", fake.clock)
        return fake

    return install


def test_the_fastest_candidate_wins_once_per_shape_class(probe_on_cpu):
    fake = probe_on_cpu({"sdpa[flash]": 3.0, "chunked": 1.0, "bmm": 2.0})
    tensors = qkv(60)
    assert select_position_backend(*tensors[:2], value=tensors[2]) == "chunked"
    # Every candidate: one warm-up and three timed runs, on the call's shapes.
    labels = [label for label, _, _ in fake.runs]
    assert labels == ["sdpa[flash]"] * 4 + ["chunked"] * 4 + ["bmm"] * 4
    assert {shape for _, shape, _ in fake.runs} == {(1, 60, 4)}
    timings = _autotune.probe_timings()
    assert list(timings.values()) == [{"sdpa[flash]": 3.0, "chunked": 1.0, "bmm": 2.0}]
    out = position_attention(*tensors)
    assert last_attention_backend() == "chunked"
    assert relative_error(out, position_attention(*tensors, backend="bmm")) < 1e-5
    # 50 and 64 positions are the same class (up to 64): no new measurement; 65 is not.
    select_position_backend(*qkv(50)[:2], value=qkv(50)[2])
    select_position_backend(*qkv(64)[:2], value=qkv(64)[2])
    assert len(fake.runs) == 12
    select_position_backend(*qkv(65)[:2], value=qkv(65)[2])
    assert len(fake.runs) == 24


def test_training_and_inference_are_measured_apart(probe_on_cpu):
    fake = probe_on_cpu({"sdpa[flash]": 1.0, "chunked": 2.0, "bmm": 3.0})
    inference = qkv(30)
    training = qkv(30, requires_grad=True)
    assert select_position_backend(*inference[:2], value=inference[2]) == "sdpa"
    assert select_position_backend(*training[:2], value=training[2]) == "sdpa"
    # Training also offers the fused forward with the chunked backward (it has no fake
    # time here, so it drops out after one try).
    runs = [(label, training) for label, _, training in fake.runs]
    inference_labels = ["sdpa[flash]"] * 4 + ["chunked"] * 4 + ["bmm"] * 4
    training_labels = [
        *inference_labels[:4],
        "sdpa[flash, chunked backward]",
        *inference_labels[4:],
    ]
    assert runs == [(label, False) for label in inference_labels] + [
        (label, True) for label in training_labels
    ]


def test_the_fused_forward_with_chunked_backward_runs_when_fastest(probe_on_cpu):
    probe_on_cpu({"sdpa[flash]": 3.0, "sdpa[flash, chunked backward]": 1.0, "chunked": 2.0})
    query, key, value = qkv(40, requires_grad=True)
    out = position_attention(query, key, value)
    assert last_attention_backend() == "sdpa"
    assert type(out.grad_fn).__name__ == "_FusedForwardChunkedBackwardBackward"
    grad = torch.randn_like(out)
    grads = torch.autograd.grad(out, (query, key, value), grad)
    reference = position_attention(query, key, value, backend="bmm")
    expected = torch.autograd.grad(reference, (query, key, value), grad)
    assert relative_error(out, reference) < 1e-5
    for ours, theirs in zip(grads, expected):
        assert relative_error(ours, theirs) < 1e-5


def test_a_candidate_that_fails_is_left_out_with_a_warning(probe_on_cpu, monkeypatch):
    fake = probe_on_cpu({"sdpa[flash]": 1.0, "chunked": 2.0, "bmm": 3.0})
    runner = fake.runner

    def failing_runner(*args):
        run = runner(*args)

        def guarded(candidate):
            if candidate.label == "sdpa[flash]":
                raise RuntimeError("cuDNN Frontend error: bad layout\nmore lines")
            return run(candidate)

        return guarded

    monkeypatch.setattr(position, "_probe_runner", failing_runner)
    tensors = qkv(20)
    with pytest.warns(UserWarning, match=r"leaves out sdpa\[flash\].*bad layout"):
        assert select_position_backend(*tensors[:2], value=tensors[2]) == "chunked"
    assert next(iter(_autotune.probe_timings().values()))["sdpa[flash]"] == float("inf")


def test_near_ties_go_to_the_earlier_leaner_candidate(probe_on_cpu):
    probe_on_cpu({"sdpa[flash]": 1.01, "chunked": 1.0, "bmm": 0.995})
    tensors = qkv(20)
    assert select_position_backend(*tensors[:2], value=tensors[2]) == "sdpa"


def test_candidates_that_cannot_run_drop_out_and_the_rule_decides_if_none_can(probe_on_cpu):
    probe_on_cpu({"bmm": 5.0})
    tensors = qkv(20)
    assert select_position_backend(*tensors[:2], value=tensors[2]) == "bmm"
    probe_on_cpu({})
    tensors = qkv(40)
    rule = position._choose_automatically(tensors[0], 40, None, False)
    assert select_position_backend(*tensors[:2], value=tensors[2]) == rule


def test_bmm_is_no_candidate_where_its_matrices_do_not_fit(probe_on_cpu, monkeypatch):
    fake = probe_on_cpu({"sdpa[flash]": 3.0, "chunked": 2.0, "bmm": 1.0})
    # 60 positions: the class holds up to 64 x 64 matrices (16 KiB in float32).
    monkeypatch.setattr(position, "BMM_MAX_MATRIX_BYTES", 64 * 60 * 4)
    tensors = qkv(60)
    assert select_position_backend(*tensors[:2], value=tensors[2]) == "chunked"
    assert "bmm" not in {label for label, _, _ in fake.runs}


def test_a_forced_value_split_is_measured_and_kept(probe_on_cpu):
    fake = probe_on_cpu({"sdpa[flash, split 4]": 1.0, "chunked": 2.0, "bmm": 3.0})
    query, key, value = qkv(20)
    position_attention(query, key, value, value_split=4)
    assert last_attention_backend() == "sdpa"
    assert fake.runs[0][0] == "sdpa[flash, split 4]"
    assert _sdpa.last_sdpa_plan().parts == 4


def test_overrides_and_explicit_backends_measure_nothing(probe_on_cpu, monkeypatch):
    fake = probe_on_cpu({"sdpa[flash]": 1.0, "chunked": 2.0, "bmm": 3.0})
    query, key, value = qkv(20)
    position_attention(query, key, value, backend="chunked")
    with attention_backend("bmm"):
        position_attention(query, key, value)
    set_attention_backend("chunked")
    try:
        position_attention(query, key, value)
    finally:
        set_attention_backend(None)
    monkeypatch.setenv("ATTNBLOCKS_BACKEND", "bmm")
    position_attention(query, key, value)
    assert fake.runs == []


def test_the_real_probe_runs_each_candidate_as_itself_and_spares_the_random_stream(
    monkeypatch,
):
    monkeypatch.setattr(_autotune, "PROBED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(_autotune, "_DECIDED", {})
    monkeypatch.setattr(_autotune, "_TIMINGS", {})
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
    monkeypatch.delenv("ATTNBLOCKS_BACKEND", raising=False)
    query, key, value = qkv(48, requires_grad=True, value_dim=32)
    run = position._probe_runner(query, key, value, True, None)
    ran = {}
    candidates = (Candidate("bmm"), Candidate("chunked"), Candidate("sdpa", 4, "flash"),
                  Candidate("sdpa", 4, "flash", True),
                  Candidate("sdpa", None, "cudnn"))  # fmt: skip
    for candidate in candidates:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback to chunked, hence no warning
            ran[candidate.label] = run(candidate)
        if candidate.backend == "sdpa" and ran[candidate.label]:
            assert _sdpa.last_sdpa_plan().parts == 4
    # No plan for cuDNN on CPU: that candidate reports it could not run (and ran nothing).
    assert ran == {"bmm": True, "chunked": True, "sdpa[flash, split 4]": True,
                   "sdpa[flash, split 4, chunked backward]": True,
                   "sdpa[cudnn]": False}  # fmt: skip
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    choice = select_position_backend(query, key, value=value)
    assert choice in ("bmm", "chunked", "sdpa")
    assert torch.equal(torch.rand(3), expected)  # the probe drew from its own generator
    timings = next(iter(_autotune.probe_timings().values()))
    assert set(timings) == {"sdpa[flash]", "sdpa[flash, chunked backward]", "chunked", "bmm"}
    assert all(0 < seconds < 10 for seconds in timings.values())


def test_no_measurement_while_compiling(monkeypatch):
    import copy

    from attnblocks import PAM

    monkeypatch.setattr(_autotune, "PROBED_DEVICE_TYPES", ("cpu",))
    monkeypatch.setattr(position, "_AUTOMATIC_CHOICES", {})
    monkeypatch.setattr(_autotune, "decide", lambda *args, **kwargs: pytest.fail("measured"))
    torch._dynamo.reset()
    pam = PAM(16, gamma_init=0.5)
    reference = copy.deepcopy(pam)
    reference.backend = "bmm"
    compiled = torch.compile(pam, backend="eager", fullgraph=True)  # dynamo's trace is enough
    x = torch.randn(1, 16, 4, 5)
    assert relative_error(compiled(x), reference(x)) < 1e-5


def _distributed_worker(rank, store, results):
    """One rank: fake timings that disagree between ranks; report what each rank chose."""
    import torch.distributed as dist

    from attnblocks.functional import _autotune, position

    os.environ.pop("ATTNBLOCKS_BACKEND", None)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        _autotune.PROBED_DEVICE_TYPES = ("cpu",)
        # Rank 0 finds chunked fastest, rank 1 would find bmm fastest.
        seconds = {0: {"sdpa[flash]": 3.0, "chunked": 1.0, "bmm": 2.0},
                   1: {"sdpa[flash]": 3.0, "chunked": 2.0, "bmm": 1.0}}[rank]  # fmt: skip
        fake = FakeProbe(seconds)
        position._probe_runner = fake.runner
        _autotune._clock = fake.clock
        report = {}
        training = qkv(40, requires_grad=True)
        report["training"] = select_position_backend(*training[:2], value=training[2])
        report["training runs"] = len(fake.runs)
        inference = qkv(40)  # inference decides per process: no collective
        report["inference"] = select_position_backend(*inference[:2], value=inference[2])
        # A class that differs between the ranks at the same step: rank 1 warns, takes the rule.
        other = qkv(100 if rank == 0 else 300, requires_grad=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report["mismatch"] = select_position_backend(*other[:2], value=other[2])
        report["rule"] = position._choose_automatically(other[0], other[1].shape[1], None, True)
        report["warned"] = any("another shape class" in str(w.message) for w in caught)
        results.put((rank, report))
    finally:
        dist.destroy_process_group()


def test_rank_zero_decides_for_every_rank_in_training(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    store = tmp_path / "store"
    workers = [context.Process(target=_distributed_worker, args=(rank, str(store), results))
               for rank in range(2)]  # fmt: skip
    for worker in workers:
        worker.start()
    reports = dict(results.get(timeout=240) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert reports[0]["training"] == reports[1]["training"] == "chunked"  # rank 0's choice
    # Rank 0: four runs of each timed candidate, one try of the untimed chunked-backward one.
    assert reports[0]["training runs"] == 13 and reports[1]["training runs"] == 0
    assert reports[0]["inference"] == "chunked" and reports[1]["inference"] == "bmm"
    assert reports[1]["warned"] and reports[1]["mismatch"] == reports[1]["rule"]
    assert not reports[0]["warned"]

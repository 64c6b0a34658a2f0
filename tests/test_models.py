"""Networks, training, model versions on disk and the scorer's rules."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from spamd import metrics, modelstore
from spamd.combine import Combiner, consult_rnn, fit_combiner
from spamd.errors import ModelIntegrityError, ModelNotFound, ScoringError, TrainingError
from spamd.nets.cnn import CNNConfig, FusedCNN, TableCNN, TextCNN
from spamd.nets.ortrnn import OrtRNN, gru_model
from spamd.nets.rnn import FusedRNN, RNNConfig, TextRNN
from spamd.scorer import Scorer, ScoringPolicy, encode
from spamd.train import Sample, split, train
from tests.fixtures_models import TINY, TrainedTiny, fixture_mail, fixture_samples


def test_networks_map_any_batch_to_one_logit_each() -> None:
    ids = torch.tensor([[5, 9, 2_000_000, 0, 0], [1, 2, 3, 4, 5]])
    cnn = TextCNN(CNNConfig(buckets=64, embed_dim=4, widths=(2, 5), filters=3, window=4))
    rnn = TextRNN(RNNConfig(buckets=64, embed_dim=4, hidden=3, window=8))
    assert cnn(ids).shape == (2,) and rnn(ids).shape == (2,)
    assert cnn(torch.tensor([[7]])).shape == (1,)  # shorter than the widest filter


def test_rnn_reads_past_the_cnn_window() -> None:
    torch.manual_seed(0)
    cnn = TextCNN(CNNConfig(buckets=64, embed_dim=4, filters=3, window=10)).eval()
    rnn = TextRNN(RNNConfig(buckets=64, embed_dim=4, hidden=3, window=100)).eval()
    a = torch.ones((1, 60), dtype=torch.int64)
    b = a.clone()
    b[0, 50:] = 7  # differs only beyond the CNN's window
    assert torch.equal(cnn(a), cnn(b))
    assert not torch.equal(rnn(a), rnn(b))


@pytest.mark.parametrize("inference", [FusedCNN, TableCNN])
@pytest.mark.parametrize("widths", [(1, 2, 3, 5), (3, 1, 5), (2,)])
def test_cnn_inference_forms_compute_what_the_cnn_computes(widths: tuple[int, ...], inference: type) -> None:
    # The scorer's CNN pass (matrix products by tap, or sums of the precomputed taps' rows) must
    # equal TextCNN.forward, which training uses: on full rows, padded rows, rows shorter than the
    # widest filter, an all-padding row.
    torch.manual_seed(0)
    cnn = TextCNN(CNNConfig(buckets=256, embed_dim=6, widths=widths, filters=5, window=40)).eval()
    ids = torch.randint(1, 10_000, (6, 50))
    ids[1, 30:], ids[2, 3:], ids[3, 1:], ids[4, :] = 0, 0, 0, 0
    fused = inference(cnn)
    with torch.no_grad():
        for batch in (ids, ids[:1], ids[2:3], ids[:, :2]):
            rows = [[i for i in row if i > 0] for row in batch.tolist()]  # each message's own ids
            assert torch.allclose(fused(rows), cnn(batch), atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("inference", [FusedRNN, OrtRNN])
def test_rnn_inference_forms_compute_what_the_packed_rnn_computes(bidirectional: bool, inference: type) -> None:
    # The RNN's inference forms (FusedRNN: both directions as one torch GRU, the backward half
    # read from each message's own end; OrtRNN, the scorer's: the GRU in onnxruntime, each message
    # on its own) must equal TextRNN.forward(packed=True): on rows of different lengths, a length
    # that is not a multiple of the stride, a row of one token, an all-padding row.
    torch.manual_seed(0)
    rnn = TextRNN(RNNConfig(buckets=256, embed_dim=6, hidden=5, stride=3, window=60,
                            bidirectional=bidirectional)).eval()
    ids = torch.randint(1, 10_000, (6, 70))
    ids[1, 40:], ids[2, 7:], ids[3, 1:], ids[4, :] = 0, 0, 0, 0
    fused = inference(rnn)
    with torch.no_grad():
        for batch in (ids, ids[:1], ids[2:3], ids[1:3]):
            assert torch.allclose(fused(batch), rnn(batch, packed=True), atol=1e-5)


def test_ortrnn_runs_when_onnx_is_newer_than_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    # An onnx package newer than the onnxruntime installed beside it (pip allows any pair) stamps
    # its own IR version on a model it builds, which the older runtime refuses: seen on a machine
    # with onnx 1.23 (IR 14) and onnxruntime 1.30 (up to 13). The GRU's graph must still load.
    import onnx
    import onnxruntime

    monkeypatch.setattr(onnx, "IR_VERSION", 99)  # an onnx from the future
    rnn = TextRNN(RNNConfig(buckets=256, embed_dim=6, hidden=5, stride=3, window=60)).eval()
    model = gru_model(rnn.gru)
    assert model.ir_version < 99
    onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = torch.randint(1, 10_000, (2, 70))
    with torch.no_grad():
        assert torch.allclose(OrtRNN(rnn)(ids), rnn(ids, packed=True), atol=1e-5)


def test_scoring_goes_on_in_torch_when_onnxruntime_cannot_run_the_rnn(
        tiny_trained: TrainedTiny, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # onnxruntime is faked here only because its failing cannot be made real: the scorer falls
    # back to torch's GRU, logs why, and gives the same scores.
    import onnxruntime

    models = tiny_trained.load()
    raws = fixture_mail("starter", "spam") + fixture_mail("starter", "ham")
    policy = ScoringPolicy(rnn_rule="always")
    expected = [v.score for v in Scorer(models, policy).score(raws)]

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no GRU kernel on this platform")

    monkeypatch.setattr(onnxruntime, "InferenceSession", refuse)
    with caplog.at_level(logging.ERROR, logger="spamd.score"):
        fallback = Scorer(models, policy)
    assert isinstance(fallback.rnn, FusedRNN)
    assert "cannot run in onnxruntime" in caplog.text and "no GRU kernel on this platform" in caplog.text
    assert [v.score for v in fallback.score(raws)] == pytest.approx(expected, abs=1e-5)


def test_the_cnn_table_gives_the_scores_of_the_matrix_products(tiny_trained: TrainedTiny) -> None:
    models = tiny_trained.load()
    raws = fixture_mail("starter", "spam") + fixture_mail("starter", "ham")
    tabled, plain = Scorer(models, cnn_table=True), Scorer(models)
    assert isinstance(tabled.cnn, TableCNN) and isinstance(plain.cnn, FusedCNN)
    assert [v.cnn for v in tabled.score(raws)] == pytest.approx([v.cnn for v in plain.score(raws)], abs=1e-6)


def test_without_memory_for_the_cnn_table_the_scorer_falls_back_to_matrix_products() -> None:
    # A real allocation failure, in a process whose address space is capped just above what it
    # holds once a starter-sized CNN is loaded, so the 528 MiB table cannot be had.
    script = """
import logging, resource, sys, torch
from spamd.nets.cnn import CNNConfig, FusedCNN, TableCNN, TextCNN
from spamd.scorer import cnn_inference
logging.basicConfig(stream=sys.stdout, level=logging.ERROR)
torch.set_num_threads(1)  # no thread pool to start (stacks, malloc arenas) once the cap is on
torch.manual_seed(0)
cnn = TextCNN(CNNConfig()).eval()
assert TableCNN.size(cnn.cfg) > 500 << 20
ids = [list(range(1, 300)), [7, 8]]
expected = FusedCNN(cnn)(ids)
size = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (200 << 20), resource.getrlimit(resource.RLIMIT_AS)[1]))
inference = cnn_inference(cnn, table=True)
print(type(inference).__name__, torch.equal(inference(ids), expected))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    assert "cannot build the CNN's table (528 MiB)" in out.stdout
    assert out.stdout.rstrip().endswith("FusedCNN True")


def test_tiny_model_scores_fixture_spam_above_fixture_ham(tiny_trained: TrainedTiny) -> None:
    scorer = Scorer(tiny_trained.load())
    spam = [v.score for v in scorer.score(fixture_mail("starter", "spam"))]
    ham = [v.score for v in scorer.score(fixture_mail("starter", "ham"))]
    assert sum(spam) / len(spam) > sum(ham) / len(ham) + 0.2
    assert metrics.roc_auc(spam + ham, [1] * len(spam) + [0] * len(ham)) > 0.8


def test_training_is_seeded_and_records_what_it_did() -> None:
    samples = fixture_samples("train")
    cfg = replace(TINY, epochs=2)
    a, b = train(samples, cfg), train(samples, cfg)
    assert torch.equal(a.cnn.embed.weight, b.cnn.embed.weight)
    m = a.manifest
    assert m.train_counts["spam"] + m.train_counts["val_spam"] == sum(s.label for s in samples)
    assert 0 < m.threshold < 1
    assert set(m.metrics) >= {"validation", "validation_cnn", "validation_rnn"}


def test_training_refuses_one_class_only() -> None:
    spam_only = [s for s in fixture_samples("train") if s.label == 1]
    with pytest.raises(TrainingError):
        train(spam_only, TINY)


def test_split_is_deterministic_by_message() -> None:
    samples = [Sample([1], i % 2, f"key{i}") for i in range(400)]
    tr, val = split(samples, 0.25)
    tr2, val2 = split(list(reversed(samples)), 0.25)
    assert {s.key for s in val} == {s.key for s in val2}
    assert 60 < len(val) < 140 and len(tr) + len(val) == 400


def test_version_round_trips_through_disk(tiny_trained: TrainedTiny) -> None:
    loaded = tiny_trained.load()
    again = modelstore.load(tiny_trained.models_dir, tiny_trained.version)
    raws = fixture_mail("starter", "spam")[:5]
    assert [v.score for v in Scorer(loaded).score(raws)] == [v.score for v in Scorer(again).score(raws)]
    assert modelstore.active_version(tiny_trained.models_dir) == tiny_trained.version
    assert modelstore.list_versions(tiny_trained.models_dir) == [tiny_trained.version]
    for name in modelstore.WEIGHT_FILES:
        assert loaded.manifest.files[name] == modelstore._sha256(tiny_trained.models_dir / loaded.version / name)


def test_tampered_weight_file_is_refused(models_dir: Path, tiny_trained: TrainedTiny) -> None:
    path = models_dir / tiny_trained.version / "cnn.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="cnn.safetensors"):
        modelstore.load(models_dir, tiny_trained.version)


def test_weights_are_plain_tensors_not_pickles(tiny_trained: TrainedTiny) -> None:
    head = (tiny_trained.models_dir / tiny_trained.version / "cnn.safetensors").read_bytes()[:8]
    header_len = int.from_bytes(head, "little")
    assert 0 < header_len < 100_000  # a safetensors header, not a pickle stream


def test_missing_and_unknown_versions_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match="ACTIVE"):
        modelstore.active_version(tmp_path)
    with pytest.raises(ModelNotFound, match="nope"):
        modelstore.load(tmp_path, "nope")
    with pytest.raises(ModelNotFound):
        modelstore.set_active(tmp_path, "nope")


def test_a_saved_version_is_never_overwritten(models_dir: Path, tiny_trained: TrainedTiny) -> None:
    models = modelstore.load(models_dir, tiny_trained.version)
    with pytest.raises(Exception, match="already exists"):
        modelstore.save(models_dir, models)


def test_warm_start_begins_from_the_parent(tiny_trained: TrainedTiny) -> None:
    parent = tiny_trained.load()
    child = train(fixture_samples("train"), replace(TINY, epochs=1, lr=1e-9), parent=parent)
    assert torch.allclose(child.cnn.embed.weight, parent.cnn.embed.weight, atol=1e-3)
    assert child.manifest.parent == parent.version


def test_rnn_rule() -> None:
    band = (0.2, 0.8)
    assert not consult_rnn("never", 0.5, 999, 10, band)
    assert consult_rnn("always", 0.01, 1, 10, band)
    assert consult_rnn("uncertain", 0.5, 1, 10, band) and not consult_rnn("uncertain", 0.9, 999, 10, band)
    assert consult_rnn("long", 0.99, 11, 10, band) and not consult_rnn("long", 0.5, 10, 10, band)


def test_scorer_flags_long_context_only_when_the_rnn_changes_the_verdict(tiny_trained: TrainedTiny) -> None:
    models = tiny_trained.load()
    raws = fixture_mail("starter", "spam") + fixture_mail("starter", "ham")
    never = Scorer(models, ScoringPolicy(rnn_rule="never")).score(raws)
    assert all(v.rnn is None and not v.long_context and v.score == v.cnn for v in never)
    # A combiner that listens only to the RNN, with the verdicts flipped, forces disagreements.
    models.manifest = replace(models.manifest, combiner=Combiner(w_cnn=0.0, w_rnn=-1.0, bias=0.0).to_dict())
    always = Scorer(models, ScoringPolicy(rnn_rule="always")).score(raws)
    assert all(v.rnn is not None for v in always)
    for v in always:
        assert v.long_context == ((v.score >= v.threshold) != (v.cnn >= v.threshold))
    assert any(v.long_context for v in always)


def test_scorer_raises_on_a_model_gone_bad(tiny_trained: TrainedTiny) -> None:
    models = tiny_trained.load()
    with torch.no_grad():
        models.cnn.out.bias.fill_(float("nan"))
    with pytest.raises(ScoringError):
        Scorer(models).score(fixture_mail("starter", "ham")[:2])


def test_combiner_learns_to_trust_the_informative_score() -> None:
    labels = [i % 2 for i in range(200)]
    informative = [4.0 if y else -4.0 for y in labels]
    noise = [((i * 7919) % 13 - 6) / 2 for i in range(200)]
    fitted = fit_combiner(noise, informative, labels)
    assert fitted.w_rnn > 0.5 and abs(fitted.w_cnn) < 0.2


def test_metrics() -> None:
    assert metrics.roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert metrics.roc_auc([0.5, 0.5], [0, 1]) == 0.5
    r = metrics.rates_at([0.1, 0.9, 0.2, 0.7], [0, 0, 1, 1], 0.5)
    assert (r.fpr, r.fnr) == (0.5, 0.5)
    t = metrics.choose_threshold([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
    assert 0.2 < t < 0.8
    assert metrics.recall_at_fpr([0.1, 0.2, 0.3, 0.9, 0.25], [0, 0, 0, 1, 1], 0.0) == 0.5


def test_a_manifest_from_before_skip_delivery_headers_reads_them(tiny_trained: TrainedTiny) -> None:
    # A version trained while the tokenizer read delivery headers must keep reading them: its
    # manifest has no `skip_delivery_headers`. New versions write the key.
    models = tiny_trained.load()
    assert models.manifest.tokenizer["skip_delivery_headers"] is True and models.tokenizer.skip_delivery_headers
    del models.manifest.tokenizer["skip_delivery_headers"]
    assert models.tokenizer.skip_delivery_headers is False


def test_manifest_is_readable_json(tiny_trained: TrainedTiny) -> None:
    data = json.loads((tiny_trained.models_dir / tiny_trained.version / "manifest.json").read_text())
    assert data["version"] == tiny_trained.version
    assert data["tokenizer"]["buckets"] > 0 and data["cnn_args"]["widths"]


def test_a_score_does_not_depend_on_batch_mates(tiny_trained: TrainedTiny) -> None:
    scorer = Scorer(tiny_trained.load(), ScoringPolicy(rnn_rule="always"))
    raws = fixture_mail("starter", "spam")[:6] + fixture_mail("starter", "ham")[:6]
    together = scorer.score(raws)
    for raw, v in zip(raws, together, strict=True):
        (alone,) = scorer.score([raw])
        assert alone.cnn == pytest.approx(v.cnn, abs=1e-6)
        assert alone.rnn == pytest.approx(v.rnn, abs=1e-6)


def test_scoring_raw_bytes_equals_scoring_complete_token_ids(tiny_trained: TrainedTiny) -> None:
    """score() tokenizes only the CNN's window unless the RNN reads on: the verdicts must not change."""
    models = tiny_trained.load()
    scorer = Scorer(models, ScoringPolicy(rnn_rule="long"))
    raws = fixture_mail("starter", "spam") + fixture_mail("starter", "ham")
    from_ids = scorer.score_ids([encode(raw, models) for raw in raws])
    assert any(v.rnn is not None for v in from_ids), "the fixtures must include messages longer than the window"
    assert scorer.score(raws) == from_ids


def test_a_new_version_never_takes_an_existing_name(models_dir: Path, tiny_trained: TrainedTiny) -> None:
    """Two trainings finishing in the same second get distinct versions; nothing is overwritten."""
    twin = modelstore.load(models_dir, tiny_trained.version)  # same timestamped name as one on disk
    path = modelstore.save(models_dir, twin, new=True)
    assert path.name == f"{tiny_trained.version}-2" == twin.version
    assert modelstore.load(models_dir, twin.version).manifest.version == twin.version
    assert modelstore.load(models_dir, tiny_trained.version)  # the first is untouched

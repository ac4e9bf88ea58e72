"""benchmarks/codec_quality.py and the metrics it adds: delay compensation, unscorable clips, the quick mode end to end
on real speech (the demo clip cut into an audiofolder), and reuse of cached systems."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
import torch

from pqvae_hf import PQVAEConfig
from pqvae_hf.metrics import (
    delay_correlation,
    estimate_delay,
    independent_log_mel_distance,
    intelligibility_and_quality,
    shift_to_reference,
)
from pqvae_hf.modeling.modeling_pqvae import GriffinLim, LogMelSpectrogram

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "benchmarks" / "codec_quality.py"
SHIPPED = REPO / "checkpoints" / "pqvae-speech-small" / "model.safetensors"
SPEECH = REPO / "assets" / "speech_orig_16k.flac"  # 10.8 s of real speech at 16 kHz
CODEC_TOOLS = ("c2enc", "c2dec", "opusenc", "opusdec")


def speech() -> np.ndarray:
    audio, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 16000
    return audio


def delayed(audio: np.ndarray, samples: int) -> np.ndarray:
    return np.concatenate([np.zeros(samples, np.float32), audio]) if samples >= 0 else audio[-samples:]


def benchmark_module():
    """benchmarks/codec_quality.py, imported as the other benchmark tests import theirs (benchmarks/ on sys.path)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import codec_quality

    return codec_quality


@pytest.mark.parametrize("delay", [208, -120, 0, 640])
def test_a_known_delay_is_found_and_undone(delay):
    audio = speech()
    estimate = delayed(audio, delay)
    found = estimate_delay([delay_correlation(audio, estimate)])
    assert abs(found["lag_samples"] - delay) <= 8  # 1 ms envelope grid: within half a step of the true delay
    aligned = shift_to_reference(estimate, found["lag_samples"], len(audio))
    assert len(aligned) == len(audio)
    if delay % 16 == 0:  # on the grid: the shift is exact
        np.testing.assert_array_equal(aligned, audio)


def test_delay_of_a_phase_free_reconstruction_is_found():
    """Griffin-Lim keeps the spectral envelope but not the waveform, like vocoders and Codec2; the envelope-based
    search still finds an inserted 20 ms delay, pooled over two halves of the clip."""
    audio = speech()
    config = PQVAEConfig(griffin_lim_iters=16)
    front_end = LogMelSpectrogram(config)
    with torch.no_grad():
        rebuilt = GriffinLim(config, front_end)(front_end(torch.from_numpy(audio)[None]))[0].numpy()
    assert abs(np.corrcoef(rebuilt[:160000], audio[:160000])[0, 1]) < 0.5  # the waveform itself does not match
    half = len(audio) // 2
    curves = [delay_correlation(audio[:half], delayed(rebuilt[:half], 320)),
              delay_correlation(audio[half:], delayed(rebuilt[half:], 320))]
    assert abs(estimate_delay(curves)["lag_samples"] - 320) <= 16  # within one 1 ms step


def test_unscorable_clips_get_none_and_a_reason_never_a_placeholder():
    audio = speech()
    piece = audio[80000:83200]  # 0.2 s of speech
    scores = intelligibility_and_quality(piece, 0.9 * piece, 16000)
    assert scores["stoi"] is None and "too short" in scores["stoi_unavailable"]
    assert scores["pesq_wb"] is None and "at least 1/4 of a second" in scores["pesq_unavailable"]
    assert independent_log_mel_distance(piece[:300], piece[:300]) == {
        "log_mel_db": None, "log_mel_unavailable": "too short: under one 25 ms analysis window"}
    assert independent_log_mel_distance(audio, audio)["log_mel_db"] == 0.0
    # half the amplitude is 6.02 dB lower wherever both stay above the floor (80 dB under the reference's peak)
    assert 4.5 < independent_log_mel_distance(audio, 0.5 * audio)["log_mel_db"] <= 6.03


def test_the_report_counts_clips_per_kind_of_reason_not_per_clip_duration():
    codec_quality = benchmark_module()

    audio = speech()
    pieces = [audio[80000:83200], audio[80000:84800], audio[:54400]]  # 0.2 s, 0.3 s, 3.4 s
    scores = [intelligibility_and_quality(piece, 0.9 * piece, 16000) for piece in pieces]
    assert scores[0]["stoi_unavailable"] != scores[1]["stoi_unavailable"]  # each names its clip's duration
    record = {"name": "system", "family": "test", "settings": {}, "tool_version": None,
              "nominal_bits_per_second": None, "delay": {}, "wall_seconds": 0.0, "total_bits": None,
              "scores": {metric: [None, None, 1.0] for metric in codec_quality.METRICS},
              "missing": {"stoi": {scores[0]["stoi_unavailable"]: [0], scores[1]["stoi_unavailable"]: [1]},
                          "pesq_wb": {scores[0]["pesq_unavailable"]: [0], "other failure": [1]},
                          "log_mel_db": {"too short": [0, 1]}}}
    clips = codec_quality.ClipSet(split="test", names=["a", "b", "c"], sources=["s", "s", "s"], audios=pieces,
                                  sha256="", selection="", decoding="")
    excluded = codec_quality.summarize([record], clips)["excluded"]
    assert excluded["stoi"] == {"clips": 2, "reasons": {
        "clip too short for STOI: it needs at least 30 frames of 25.6 ms of non-silent speech (about 0.4 s or more)": 2}}
    assert excluded["pesq_wb"]["reasons"] == {
        "PESQ could not be computed: Buffer needs to be at least 1/4 of a second long": 1, "other failure": 1}


def test_later_checkpoints_are_paired_with_the_first_through_the_same_input_and_vocoder():
    codec_quality = benchmark_module()

    def record(name, family, settings, stoi):
        return {"name": name, "family": family, "settings": settings, "tool_version": None,
                "nominal_bits_per_second": None, "delay": {}, "wall_seconds": 0.0, "total_bits": None,
                "scores": {"stoi": stoi, "pesq_wb": [2.0, 2.0, 2.0], "log_mel_db": [5.0, 5.0, 5.0]},
                "missing": {metric: {} for metric in codec_quality.METRICS}}

    def ours(checkpoint, vocoder, stoi):
        return record(f"{checkpoint}: {vocoder}", "pqvae",
                      {"checkpoint": checkpoint, "input": "tokens", "vocoder": vocoder}, stoi)

    records = [ours("new", "neural", [0.8, 0.7, 0.9]), ours("new", "griffin_lim", [0.6, 0.6, 0.6]),
               ours("old", "neural", [0.7, 0.7, 0.7]), ours("old", "griffin_lim", [0.5, 0.6, 0.7]),
               record("Codec2 1300", "codec2", {}, [0.75, 0.75, 0.75]),
               record("new true: neural", "ceiling", {"checkpoint": "new", "input": "true_mel", "vocoder": "neural"},
                      [0.95, 0.9, 0.95]),
               record("new true: griffin_lim", "ceiling",
                      {"checkpoint": "new", "input": "true_mel", "vocoder": "griffin_lim"}, [0.9, 0.9, 0.85]),
               record("old true: neural", "ceiling", {"checkpoint": "old", "input": "true_mel", "vocoder": "neural"},
                      [0.9, 0.9, 0.9])]
    clips = codec_quality.ClipSet(split="test", names=["a", "b", "c"], sources=["s"] * 3, audios=[np.zeros(16000)] * 3,
                                  sha256="", selection="", decoding="")
    paired = {(row["system"], row["baseline"]): row["difference"]["stoi"]
              for row in codec_quality.summarize(records, clips)["paired_differences"]}
    # Each token system against Codec2, the later checkpoint against the first through the same vocoder only, and
    # each neural vocoder against Griffin-Lim on the same checkpoint's mel (a ceiling: against Griffin-Lim only, not
    # against the first checkpoint's, so "old true: neural", without a Griffin-Lim beside it, has no pair).
    assert set(paired) == {("new: neural", "Codec2 1300"), ("new: griffin_lim", "Codec2 1300"),
                           ("old: neural", "Codec2 1300"), ("old: griffin_lim", "Codec2 1300"),
                           ("old: neural", "new: neural"), ("old: griffin_lim", "new: griffin_lim"),
                           ("new: neural", "new: griffin_lim"), ("old: neural", "old: griffin_lim"),
                           ("new true: neural", "new true: griffin_lim")}
    assert paired[("old: neural", "new: neural")]["mean"] == pytest.approx(-0.1)  # (-0.1, 0.0, -0.2) / 3 clips
    assert paired[("old: neural", "new: neural")]["standard_error"] == pytest.approx(0.1 / 3 ** 0.5)
    assert paired[("old: griffin_lim", "new: griffin_lim")]["mean"] == pytest.approx(0.0)
    assert paired[("new: neural", "new: griffin_lim")]["mean"] == pytest.approx(0.2)
    assert paired[("new true: neural", "new true: griffin_lim")]["mean"] == pytest.approx(0.05)


def write_speech_audiofolder(directory: Path) -> list[str]:
    """Three 3.4 s clips of real speech from two 'sources', and one 0.2 s clip no metric but log-mel can score."""
    audio = speech()
    pieces = [("a_0.wav", "source_a", audio[:54400]), ("a_1.wav", "source_a", audio[54400:108800]),
              ("b_0.wav", "source_b", audio[108800:163200]), ("b_short.wav", "source_b", audio[80000:83200])]
    directory.mkdir(parents=True)
    with open(directory / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file_name", "source", "split"])
        for name, source, samples in pieces:
            sf.write(directory / name, samples, 16000)
            writer.writerow([name, source, "test"])
    return [name for name, _, _ in pieces]


def run_benchmark(corpus: Path, output: Path, *extra: str, path_variable: str | None = None) -> dict:
    command = [sys.executable, str(SCRIPT), "--corpus_dir", str(corpus), "--split", "test", "--quick",
               "--opus_kbps", "6", "--output_dir", str(output), *extra]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    if path_variable is not None:
        environment["PATH"] = path_variable
    process = subprocess.run(command, capture_output=True, text=True, timeout=300, env=environment)
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads((output / "results.json").read_text())


@pytest.mark.skipif(not SHIPPED.exists(), reason="needs the shipped checkpoint")
def test_quick_mode_end_to_end_on_real_speech(tmp_path):
    names = write_speech_audiofolder(tmp_path / "corpus")
    output = tmp_path / "results"
    results = run_benchmark(tmp_path / "corpus", output)
    tools_present = all(shutil.which(tool) for tool in CODEC_TOOLS)
    ours = ["PQ-VAE pqvae-speech-small: tokens -> neural vocoder", "PQ-VAE pqvae-speech-small: tokens -> Griffin-Lim",
            "ceiling pqvae-speech-small: true mel -> neural mel vocoder",
            "ceiling pqvae-speech-small: true mel -> Griffin-Lim"]
    baselines = ["Codec2 3200", "Codec2 1300", "Codec2 700C", "Opus 6 kbit/s"]
    systems = {system["name"]: system for system in results["summary"]["systems"]}
    if tools_present:
        assert set(systems) == set(ours + baselines) and not results["not_run"]
    else:  # the benchmark still runs, and says why the codecs are missing
        assert set(systems) == set(ours)
        assert all("not installed" in results["not_run"][name] for name in baselines)
    assert len(list((output / "systems").glob("*.json"))) == len(systems)

    # The 0.2 s clip is excluded from STOI and PESQ (with its reason) for every system alike, but has a log-mel score.
    summary = results["summary"]
    assert summary["clips"] == 4 and summary["clips_per_source"] == {"source_a": 2, "source_b": 2}
    assert summary["common_clips"] == {"stoi": 3, "pesq_wb": 3, "log_mel_db": 4}
    assert "too short" in next(iter(summary["excluded"]["stoi"]["reasons"]))
    assert "at least 1/4 of a second" in next(iter(summary["excluded"]["pesq_wb"]["reasons"]))
    short = names.index("b_short.wav")
    for path in (output / "systems").glob("*.json"):
        record = json.loads(path.read_text())
        assert record["scores"]["stoi"][short] is None and record["scores"]["pesq_wb"][short] is None
        assert record["scores"]["log_mel_db"][short] is not None
    for system in systems.values():
        metrics = system["metrics"]
        assert 0 < metrics["stoi"]["mean"] <= 1 and 1 <= metrics["pesq_wb"]["mean"] <= 4.65
        assert metrics["log_mel_db"]["mean"] > 0 and metrics["stoi"]["clips"] == 3
        assert system["per_source"]["source_b"]["stoi"]["clips"] == 1

    # Our decoders add no delay; the ceilings beat the tokens (quantization can only lose information).
    tokens, ceiling = systems[ours[1]], systems[ours[3]]
    assert abs(tokens["delay"]["lag_ms"]) <= 2 and abs(ceiling["delay"]["lag_ms"]) <= 2
    assert tokens["measured_bits_per_second"] == pytest.approx(1000, rel=0.02)
    assert ceiling["measured_bits_per_second"] is None and ceiling["nominal_bits_per_second"] is None
    assert ceiling["metrics"]["stoi"]["mean"] > tokens["metrics"]["stoi"]["mean"]
    if tools_present:
        codec2 = systems["Codec2 3200"]
        assert codec2["measured_bits_per_second"] == pytest.approx(3200, rel=0.1)
        assert 10 <= codec2["delay"]["lag_ms"] <= 30  # Codec2's algorithmic delay, found and undone
        assert systems["Opus 6 kbit/s"]["measured_bits_per_second"] == pytest.approx(6000, rel=0.3)
        assert abs(systems["Opus 6 kbit/s"]["delay"]["lag_ms"]) <= 1  # opusdec removes Opus's pre-skip
        assert ceiling["metrics"]["stoi"]["mean"] > systems["Codec2 700C"]["metrics"]["stoi"]["mean"]
        assert systems["Codec2 3200"]["metrics"]["stoi"]["mean"] > systems["Codec2 700C"]["metrics"]["stoi"]["mean"]
        # Paired differences: ours minus each Codec2 mode, clip by clip; their mean is the difference of the means.
        records = [json.loads(path.read_text()) for path in (output / "systems").glob("*.json")]
        records = {record["name"]: record for record in records}
        paired = {(row["system"], row["baseline"]): row["difference"] for row in summary["paired_differences"]}
        # 2 token systems x 3 Codec2 modes, and each neural vocoder against Griffin-Lim on the same mel (tokens' and
        # true); Opus is not paired.
        assert len(paired) == 2 * 3 + 2
        assert (ours[2], ours[3]) in paired and (ours[0], ours[1]) in paired
        difference = paired[(ours[0], "Codec2 1300")]["pesq_wb"]
        clips = [i for i in range(4) if i != short]
        per_clip = [records[ours[0]]["scores"]["pesq_wb"][i] - records["Codec2 1300"]["scores"]["pesq_wb"][i]
                    for i in clips]
        assert difference["clips"] == 3 and difference["mean"] == pytest.approx(np.mean(per_clip))
        assert difference["standard_error"] == pytest.approx(np.std(per_clip, ddof=1) / np.sqrt(3))
        assert difference["mean"] == pytest.approx(systems[ours[0]]["metrics"]["pesq_wb"]["mean"]
                                                   - systems["Codec2 1300"]["metrics"]["pesq_wb"]["mean"])
        assert "paired clip by clip" in (output / "results.md").read_text()
    for name in ("results.md", "quality_vs_bitrate.png"):
        assert (output / name).stat().st_size > 2000, name
    assert json.loads((output / "clips.json").read_text())["file_name"] == names

    # A later call (e.g. with a new checkpoint) reuses every cached system, baselines included, and changes nothing.
    again = run_benchmark(tmp_path / "corpus", output, "--skip_baselines")
    assert set(again["how_obtained"].values()) == {"cached"}
    assert again["summary"]["systems"] == results["summary"]["systems"]
    # A checkpoint's systems narrowed to tokens -> neural vocoder (as the post-filter sweep does): the rest not run.
    narrowed = run_benchmark(tmp_path / "corpus", output, "--skip_baselines", "--checkpoint_inputs", "tokens",
                             "--checkpoint_vocoders", "neural")
    narrowed_names = {system["name"] for system in narrowed["summary"]["systems"]}
    assert narrowed_names == {ours[0]} | (set(baselines) if tools_present else set())


@pytest.mark.skipif(not SHIPPED.exists(), reason="needs the shipped checkpoint")
def test_missing_codec_tools_skip_those_systems_and_say_how_to_install_them(tmp_path):
    write_speech_audiofolder(tmp_path / "corpus")
    results = run_benchmark(tmp_path / "corpus", tmp_path / "results", "--max_clips", "1", "--codec2_modes", "3200",
                            path_variable=str(tmp_path / "empty_bin"))
    assert len(results["summary"]["systems"]) == 4
    assert results["not_run"] == {
        "Codec2 3200": "skipped: c2enc, c2dec not installed (apt-get install codec2)",
        "Opus 6 kbit/s": "skipped: opusenc, opusdec not installed (apt-get install opus-tools)"}


def test_checkpoint_systems_follow_the_requested_inputs_and_vocoders(tmp_path):
    """--checkpoint_inputs / --checkpoint_vocoders pick a checkpoint's systems; asking only for a vocoder the checkpoint
    does not have is an error naming what it has, not an empty result."""
    codec_quality = benchmark_module()
    from conftest import TINY

    from pqvae_hf import PQVAEModel

    folder = tmp_path / "no_vocoder"
    PQVAEModel(PQVAEConfig(**TINY, vocoder="none")).save_pretrained(folder)
    models = codec_quality._ModelCache()
    every = codec_quality.checkpoint_systems(str(folder), models, 30.0)
    assert [(s.settings["input"], s.settings["vocoder"]) for s in every] == [("tokens", "griffin_lim"),
                                                                           ("true_mel", "griffin_lim")]
    assert "no neural vocoder" in every[0].notes[0]
    tokens_only = codec_quality.checkpoint_systems(str(folder), models, 30.0, inputs=("tokens",))
    assert [s.name for s in tokens_only] == ["PQ-VAE no_vocoder: tokens -> Griffin-Lim"]
    with pytest.raises(SystemExit, match="its vocoders: griffin_lim"):
        codec_quality.checkpoint_systems(str(folder), models, 30.0, vocoders=("neural",))


def test_a_checkpoint_with_a_mel_vocoder_renders_true_mels_with_it(tmp_path):
    """Tokens go through `vocoder`, true mels through `mel_vocoder`, and the system names say which."""
    codec_quality = benchmark_module()
    from conftest import TINY

    from pqvae_hf import PQVAEModel

    folder = tmp_path / "two_vocoders"
    model = PQVAEModel(PQVAEConfig(**TINY, vocoder="neural", vocoder_hidden_size=16, vocoder_intermediate_size=32,
                                   vocoder_num_layers=1, mel_vocoder="neural",
                                   mel_vocoder_magnitude_prior="mel_pseudo_inverse")).eval()
    model.save_pretrained(folder)
    models = codec_quality._ModelCache()
    systems = codec_quality.checkpoint_systems(str(folder), models, 30.0, vocoders=("neural",))
    assert [s.name for s in systems] == ["PQ-VAE two_vocoders: tokens -> neural vocoder",
                                         "ceiling two_vocoders: true mel -> neural mel vocoder"]
    assert systems[1].settings["neural_vocoder_module"] == "mel_vocoder"
    assert "neural_vocoder_module" not in systems[0].settings  # tokens: the cache key of any checkpoint as before
    audio = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1  # 0.5 s at 16 kHz
    waveform, bits = systems[1].make_runner()(audio)
    assert bits is None
    with torch.no_grad():
        narrowband = torch.from_numpy(soxr.resample(audio, 16000, 8000))[None]
        expected = model.mel_vocoder(model.front_end(narrowband))[0].numpy()
        other = model.vocoder(model.front_end(narrowband))[0].numpy()
    expected = soxr.resample(expected, 8000, 16000)
    assert np.abs(waveform - expected).max() < 1e-4 < np.abs(waveform - soxr.resample(other, 8000, 16000)).max()

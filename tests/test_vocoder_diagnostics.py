"""benchmarks/vocoder_diagnostics.py and the Griffin-Lim pieces it reuses (`GriffinLim.magnitude`, `.retrieve_phase`)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pqvae_hf import PQVAEModel

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
SHIPPED = REPO / "checkpoints" / "pqvae-speech-small"
SPEECH = REPO / "assets" / "speech_orig_16k.flac"

vocoder_diagnostics = pytest.importorskip("vocoder_diagnostics")


@pytest.fixture(scope="module")
def shipped():
    return PQVAEModel.from_pretrained(SHIPPED).eval()


@pytest.fixture(scope="module")
def speech():
    audio, rate = sf.read(SPEECH, dtype="float32")
    assert rate == 16000
    return audio[: 3 * rate]


def test_phase_retrieval_keeps_a_consistent_spectrogram(shipped, speech):
    """Started from the true phase with the true magnitude, Griffin-Lim is at a fixed point: the waveform comes back
    (a wrong `initial_phase` handling, e.g. ignoring it, would start from random phases and lose the waveform)."""
    from pqvae_hf.modeling.modeling_pqvae import GriffinLim

    front = shipped.front_end
    # A whole number of hops, zero-padded like Griffin-Lim's own STFT: the spectrogram is exactly consistent.
    audio = torch.from_numpy(speech[: len(speech) // front.hop_length * front.hop_length])[None]
    spec = torch.stft(audio, front.n_fft, hop_length=front.hop_length, win_length=front.win_length,
                      window=front.window, center=True, pad_mode="constant", return_complex=True)
    length = (spec.shape[-1] - 1) * front.hop_length
    griffin_lim = GriffinLim(shipped.config, front)
    rebuilt = griffin_lim.retrieve_phase(spec.abs(), length, spec.angle())[0]
    error = (rebuilt - audio[0, :length]).abs().max().item()
    assert error < 1e-3, error
    random_start = griffin_lim.retrieve_phase(spec.abs(), length)[0]
    assert (random_start - audio[0, :length]).abs().max().item() > 0.05  # random phases do not recover the waveform


def test_magnitude_errors_measure_distance_from_the_true_magnitude(shipped, speech):
    from pqvae_hf.modeling.modeling_pqvae import GriffinLim

    front = shipped.front_end
    audio = torch.from_numpy(speech)[None]
    true = front.magnitude(audio)
    floor = shipped.config.log_floor
    exact = vocoder_diagnostics.magnitude_errors(front, true, true, floor)
    assert exact == {"spectral_convergence": 0.0, "log_mel_l1": 0.0}
    inverse = GriffinLim(shipped.config, front).magnitude(front(audio))
    approximate = vocoder_diagnostics.magnitude_errors(front, inverse, true, floor)
    # The pseudo-inverse of an 80-band mel smears the harmonics above ~1 kHz but keeps the energy where it is.
    assert 0.1 < approximate["spectral_convergence"] < 0.6, approximate
    doubled = vocoder_diagnostics.magnitude_errors(front, 2 * true, true, floor)
    assert doubled["spectral_convergence"] == pytest.approx(1.0, abs=1e-5)
    assert doubled["log_mel_l1"] == pytest.approx(np.log(2), abs=1e-3)


def test_phase_errors_are_zero_for_the_clip_itself_and_random_for_unrelated_noise(shipped, speech):
    from pqvae_hf.vocoder_training import PhaseDerivativeLoss

    phase_loss = PhaseDerivativeLoss(shipped.config)
    exact = vocoder_diagnostics.phase_errors(phase_loss, torch.from_numpy(speech)[None], speech)
    assert exact == {"inst_freq_error": 0.0, "group_delay_error": 0.0}
    noise = torch.randn(1, len(speech), generator=torch.Generator().manual_seed(0)) * 0.1
    unrelated = vocoder_diagnostics.phase_errors(phase_loss, noise, speech)
    # Independent of the speech, yet below pi / 2 (uniform anti-wrapped differences): with 75 % frame overlap any
    # signal's phase advances by about its bin's centre frequency per hop, and a Hann-windowed frame's phase slope
    # across bins sits near the frame centre, for noise as for speech. ~1.1 rad is the floor of "no information".
    for value in unrelated.values():
        assert 0.9 < value < np.pi / 2, unrelated


def test_cli_scores_every_system_on_both_inputs(tmp_path):
    """End to end on two clips: the demo speech cut into an audiofolder, the shipped checkpoint."""
    import csv

    audio, rate = sf.read(SPEECH, dtype="float32")
    folder = tmp_path / "corpus"
    folder.mkdir()
    rows = []
    for index, (start, seconds) in enumerate([(0.0, 3.0), (4.0, 2.5)]):
        name = f"clip_{index}.flac"
        sf.write(folder / name, audio[int(start * rate): int((start + seconds) * rate)], rate)
        rows.append({"file_name": name, "split": "validation"})
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "split"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    results = vocoder_diagnostics.main(["--corpus_dir", str(folder), "--clips", "0", "--output_dir", str(out)])
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]
    for source in vocoder_diagnostics.INPUTS:
        systems = results["summary"][source]["systems"]
        assert set(systems) == set(vocoder_diagnostics.SYSTEMS)
        for row in systems.values():
            assert row["pesq_wb_clips"] == 2 and 1.0 <= row["pesq_wb"] <= 4.7
            assert 0.1 < row["inst_freq_error"] < np.pi / 2 and 0.1 < row["group_delay_error"] < np.pi / 2
            assert row["stoi_clips"] == 2 and 0.3 <= row["stoi"] <= 1.0
        magnitudes = results["summary"][source]["magnitudes"]
        assert all(0 < row["spectral_convergence"] < 2 for row in magnitudes.values())
    # On the true mel Griffin-Lim gets PESQ-WB well above 2 on real speech (its ceiling on validation is ~3).
    assert results["summary"]["true mel"]["systems"]["Griffin-Lim"]["pesq_wb"] > 2.0
    assert "## token mel" in (out / "results.md").read_text()

"""`stablesr bench models` prints figures for a tiny configuration (no assertions on the numbers)."""

from stablesr.cli.main import main


def test_bench_models_tiny_prints_every_phase(capsys):
    assert main(["bench", "models", "--size", "tiny", "--image-size", "64", "--steps", "1", "--dtypes", "fp32,bf16",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for phase in ("unet ", "unet+sft+encoder", "vae encode", "vae decode"):
        assert out.count(phase) == 2, phase
    assert "vs bare UNet" in out and "MB" in out

"""CFW: PatchGAN shapes and hinge losses, triplet generation, and a trainer that only moves the fusion layers."""

from __future__ import annotations

import pytest
import torch

from stablesr.data.records import to_record
from stablesr.training.cfw_data import CFWTripletDataset, generate_cfw_data, load_latent
from stablesr.training.cfw_trainer import FUSION_PREFIXES, CFWTrainer
from stablesr.training.config import CFWTrainConfig, config_from_dict
from stablesr.training.discriminator import PatchDiscriminator, hinge_discriminator_loss, hinge_generator_loss
from tiny_models import make_tiny_pipeline


def test_patch_discriminator_layout():
    discriminator = PatchDiscriminator()
    assert discriminator(torch.zeros(1, 3, 256, 256)).shape == (1, 1, 30, 30)  # the 70x70 PatchGAN map
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]


def test_hinge_losses_known_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # D: 0.5 * (mean(relu(1 - [2, .5])) + mean(relu(1 + [-2, 0]))) = 0.5 * (0.25 + 0.5)
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(0.375)
    assert hinge_generator_loss(fake).item() == pytest.approx(1.0)


@pytest.fixture(scope="module")
def cfw_folder(hr_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cfw_data")
    pipe = make_tiny_pipeline()
    generate_cfw_data(pipe, [hr_folder], folder, num_samples=3, crop_size=32, degradation="bicubic", steps=2,
                      batch_size=2, seed=0, progress=False)
    return folder


def test_generated_triplets_match_and_reproduce(cfw_folder, hr_folder, tmp_path):
    names = sorted(p.name for p in (cfw_folder / "latents").iterdir())
    assert names == [f"{k:07d}.safetensors" for k in range(3)]
    dataset = CFWTripletDataset([cfw_folder])
    item = dataset[0]
    assert item["lr_up"].shape == item["gt"].shape == (3, 32, 32) and item["latent"].shape == (4, 4, 4)
    # item 2 drawn alone (start_index 2, npy) equals item 2 of the batched run
    generate_cfw_data(make_tiny_pipeline(), [hr_folder], tmp_path, num_samples=1, crop_size=32,
                      degradation="bicubic", steps=2, seed=0, start_index=2, latent_format="npy", progress=False)
    assert torch.equal(CFWTripletDataset([tmp_path])[0]["gt"], dataset[2]["gt"])
    assert load_latent(tmp_path / "latents" / "0000002.npy").shape == (4, 4, 4)


def cfw_config(cfw_folder, output_dir, **run) -> CFWTrainConfig:
    run = {"output_dir": str(output_dir), "max_steps": 4, "gradient_accumulation_steps": 1, "checkpoint_every": 4,
           "progress": False, **run}
    return config_from_dict(CFWTrainConfig, {
        "data": {"folders": [str(cfw_folder)], "batch_size": 1, "num_workers": 0},
        "loss": {"disc_start": 2, "disc_channels": 8, "lpips_backbone_path": str(output_dir / "absent")},
        "optimizer": {"learning_rate": 1e-3}, "run": run})


def test_cfw_training_moves_only_the_fusion_layers(cfw_folder, tmp_path):
    from stablesr.pipelines.stablesr import StableSRPipeline

    pipe = make_tiny_pipeline()
    before = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    others = {k: v.clone() for k, v in {**pipe.unet.state_dict(), **pipe.sr_module.state_dict()}.items()}
    with pytest.warns(UserWarning, match="perceptual loss OFF"):
        trainer = CFWTrainer(cfw_config(cfw_folder, tmp_path), pipeline=pipe)
    disc_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    folder = trainer.train()
    changed = {k for k, v in pipe.vae.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith(FUSION_PREFIXES) for k in changed)
    assert {k.split(".")[0] for k in changed} == {"fusion_layer_1", "fusion_layer_2"}
    assert all(torch.equal(v, others[k]) for k, v in {**pipe.unet.state_dict(), **pipe.sr_module.state_dict()}.items())
    conv_weights = [k for k in disc_before if k.endswith("weight")]
    assert any(not torch.equal(trainer.discriminator.state_dict()[k], disc_before[k]) for k in conv_weights)
    assert "perceptual loss OFF" in (tmp_path / "logs" / "notes.txt").read_text()
    loaded = StableSRPipeline.from_pretrained(folder)
    assert loaded.config.cfw_trained
    assert all(torch.equal(loaded.vae.state_dict()[k], v) for k, v in pipe.vae.state_dict().items())


def test_discriminator_waits_for_disc_start(cfw_folder, tmp_path):
    with pytest.warns(UserWarning):
        trainer = CFWTrainer(cfw_config(cfw_folder, tmp_path, max_steps=2), pipeline=make_tiny_pipeline())
    disc_before = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
    trainer.train()  # steps 0 and 1 < disc_start 2: no GAN terms, the discriminator is untouched
    assert all(torch.equal(trainer.discriminator.state_dict()[k], v) for k, v in disc_before.items())
    rows = (tmp_path / "logs" / "train_log.csv").read_text().splitlines()
    assert rows[0] == "step,loss,l1,perceptual,g_loss,d_loss,lr,steps_per_s,elapsed_s"
    assert rows[-1].split(",")[4:6] == ["0.0", "0.0"]


def test_cfw_training_with_the_decoder_moves_decoder_and_fusion_only(cfw_folder, tmp_path):
    pipe = make_tiny_pipeline()
    before = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    config = cfw_config(cfw_folder, tmp_path)
    config = config_from_dict(CFWTrainConfig, {**to_record(config), "train_decoder": True})
    with pytest.warns(UserWarning, match="perceptual loss OFF"):
        trainer = CFWTrainer(config, pipeline=pipe)
    trainer.train()
    changed = {k for k, v in pipe.vae.state_dict().items() if not torch.equal(v, before[k])}
    assert {k.split(".")[0] for k in changed} == {"fusion_layer_1", "fusion_layer_2", "decoder", "post_quant_conv"}
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in changed)
    # a resumed run restores the decoder from its checkpoint, not only the fusion layers
    weights = trainer.trainable_weights()["trainable"]
    assert any(k.startswith("decoder.") for k in weights) and any(k.startswith("fusion_layer_1.") for k in weights)

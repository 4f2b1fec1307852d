"""The codec adaptation of a fine-tune (latentgen.adapt): the detail measure that says when the decoder must be
tuned, the loss that weights detail, and the data that gives the folder half of every batch."""

import torch

from latentgen.adapt import DETAIL_WEIGHT, Decoder, DecoderData, decoder_step, edge_psnr, local_contrast, psnr


def _star_and_blob() -> tuple[torch.Tensor, torch.Tensor]:
    """A 64 px grey image with a small red cross (5 px arms) and the same image with the arms cut off: a
    rendering that lost the shape's detail but little of its pixels.  # (1, 3, 64, 64) each"""
    x = torch.full((1, 3, 64, 64), 0.5)
    red = torch.tensor([1.0, -1.0, -1.0])[:, None]
    x[0, :, 30:34, 25:39] = red[..., None]  # the horizontal arm
    x[0, :, 25:39, 30:34] = red[..., None]  # the vertical arm
    y = torch.full_like(x, 0.5)
    y[0, :, 29:35, 29:35] = red[..., None]  # a blob where the cross was
    return x, y


def test_edge_psnr_sees_a_lost_small_shape_that_psnr_forgives():
    x, blob = _star_and_blob()
    assert psnr(blob, x) > 20  # whole-image PSNR: most pixels are background, and right
    assert edge_psnr(blob, x) < psnr(blob, x) - 10  # on the shape's outline the blob is far off
    assert edge_psnr(x, x) > 60 and edge_psnr(x + 0.01, x) > 40
    flat = torch.zeros(1, 3, 16, 16)  # no detail at all: nothing to measure, no division by zero
    assert torch.isfinite(torch.tensor(edge_psnr(flat + 0.1, flat)))


def test_decoder_loss_counts_an_error_on_detail_more_than_the_same_error_on_background():
    x, _ = _star_and_blob()
    contrast = local_contrast(x)  # (1, 1, 64, 64)
    assert contrast[0, 0, 0, 0] == 0 and contrast.max() > 1
    target = x.expand(2, -1, -1, -1).clone()
    on_edge, on_flat = target.clone(), target.clone()
    on_edge[0, :, 30, 25] += 0.5  # the tip of an arm
    on_flat[0, :, 5, 5] += 0.5  # the background

    class Fixed(torch.nn.Module):  # a "decoder" whose output is given
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, z):
            return self.out

    batch = {"latent": torch.zeros(2, 4, 8, 8), "target": target, "prior": torch.tensor([False, True])}
    edge_loss = decoder_step(Fixed(on_edge), batch, None)["loss"]
    flat_loss = decoder_step(Fixed(on_flat), batch, None)["loss"]
    assert edge_loss > 2 * flat_loss
    assert float(edge_loss / flat_loss) <= 1 + DETAIL_WEIGHT * float(contrast.max())


def test_the_folder_fills_half_of_the_decoder_data_however_few_its_images():
    from tests.tiny_models import make_tiny_components

    vae = make_tiny_components()["vae"].eval()
    new, prior = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(5, 3, 16, 16) * 2 - 1
    data = DecoderData(vae, new, prior)
    assert len(data) == 6 + 5  # the two new images three times each, then the five prior ones
    assert [bool(data[i]["prior"]) for i in range(len(data))] == [False] * 6 + [True] * 5
    torch.testing.assert_close(data[2]["target"], new[0])  # repeated whole
    with torch.no_grad():
        ref = vae.decode(vae.encode(prior[:1]).latent_dist.mode()).sample.clamp(-1, 1)[0]
    torch.testing.assert_close(data[6]["target"], ref)  # the prior's target: the old decoder's pixels
    assert isinstance(Decoder(vae)(data[0]["latent"][None]), torch.Tensor)

"""Weight-space interpolation of a distilled student toward its teacher (WiSE-FT, Wortsman et al. 2022).

Fine-tuning a model can cost it what it did out of distribution, and averaging the fine-tuned weights
with the original ones (theta = theta_0 + a (theta_1 - theta_0), Eq. 1 of Wortsman et al. 2022) often
brings that back. Here theta_0 is the teacher's UNet and theta_1 the 4-step student's; the student's
guidance embedding (``time_embedding.cond_proj``, zero in the teacher) is scaled by a. Each a gives a
complete model folder (the student's other parts) to score with ``latentgen eval shapes``:

    python -m bench.interpolate_student --out runs/wise --alpha 0.9 0.75
    latentgen eval shapes --model runs/wise/alpha-0.9 --n 100 --groups 2_objects,heldout --seed 0
"""

from __future__ import annotations

import argparse
import os


def interpolate(teacher_state: dict, student_state: dict, alpha: float) -> dict:
    """theta_0 + a (theta_1 - theta_0) for every tensor of the student; a * theta_1 where the teacher has none."""
    return {k: teacher_state[k] + alpha * (v - teacher_state[k]) if k in teacher_state else alpha * v
            for k, v in student_state.items()}


def main(argv=None) -> list[str]:
    import torch
    from diffusers import UNet2DConditionModel

    from latentgen.export import copy_model

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="latentgen/weights/default")
    p.add_argument("--student", default="latentgen/weights/default-4step")
    p.add_argument("--out", required=True, help="one alpha-A/ model folder per --alpha goes here")
    p.add_argument("--alpha", type=float, nargs="+", required=True, help="1 = the student, 0 = the teacher")
    args = p.parse_args(argv)
    teacher = UNet2DConditionModel.from_pretrained(os.path.join(args.teacher, "unet"), torch_dtype=torch.float32)
    student = UNet2DConditionModel.from_pretrained(os.path.join(args.student, "unet"), torch_dtype=torch.float32)
    t_state, s_state = teacher.state_dict(), student.state_dict()
    folders = []
    for a in args.alpha:
        out = os.path.join(args.out, f"alpha-{a:g}")
        copy_model(args.student, out)  # the model parts only: no checkpoints or logs of a run folder
        unet = UNet2DConditionModel.from_config(student.config)
        unet.load_state_dict(interpolate(t_state, s_state, a))
        unet.save_pretrained(os.path.join(out, "unet"))  # safetensors, over the copied student's
        folders.append(out)
        print(out)
    return folders


if __name__ == "__main__":
    main()

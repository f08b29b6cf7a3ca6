"""One scorer: validation (which selects best.pt), evaluate.py and model.predict score a face the same way."""
import numpy as np
import torch
from torch.utils.data import DataLoader

from model import build_model, predict
from model.config_io import load_config
from model.data.datasets import EvalDataset, collate_eval
from model.eval import inference, validation
from tests.tiny import SIZE, write_split


def test_validation_evaluation_and_predict_give_the_same_scores(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model({"backbone": "test_efficientnet", "input_size": SIZE, "head_conv": 8}).eval()
    split = write_split(tmp_path / "toy" / "val", n_videos=2, frames=3, seed=1, fake_videos=2)
    dataset = EvalDataset([str(split)], SIZE)
    device = torch.device("cpu")

    direct = inference.run_inference(model, DataLoader(dataset, batch_size=4, collate_fn=collate_eval), device)
    evaluated = inference.run_dataset(model, dataset, 3, device, True, collate_eval, 0, "test")
    np.testing.assert_allclose(evaluated.logits, direct.logits, rtol=1e-5, atol=1e-6)

    seen = []
    real_run = inference.run_inference

    def recording(*args, **kw):
        seen.append(real_run(*args, **kw))
        return seen[-1]

    monkeypatch.setattr(validation, "run_inference", recording)
    cfg = load_config(None, [f"val.shards=[{split}]", "val.fakes=real", "val.num_workers=0",
                             f"data.image_size={SIZE}", f"model.input_size={SIZE}", "val.frames_per_video=100"])
    loader, mode = validation.build_val_loader(cfg)
    assert "flip test on" in mode
    validation.validate(model, loader, device, flip=cfg.val.flip)
    np.testing.assert_allclose(seen[0].logits, direct.logits, rtol=1e-5, atol=1e-6)

    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    cls, _ = predict.score_faces(model, images, flip=True)
    np.testing.assert_allclose(cls.numpy(), direct.logits, rtol=1e-5, atol=1e-6)
    assert predict.score_faces is inference.score_faces
    cls_noflip, _ = inference.score_faces(model, images, flip=False)
    assert not np.allclose(cls_noflip.numpy(), direct.logits)      # the flip test is really on


def test_scoring_runs_only_the_heads_it_needs():
    """score_faces skips the heatmap and consistency heads when it needs the cls logit only; the logits are the
    ones of the full forward pass."""
    import torch

    from model.config import ModelConfig
    from model.eval.inference import score_faces
    from model.net.laanet import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="test_efficientnet", input_size=64, head_conv=8)).eval()
    ran = []
    for name, head in model.heads.items():
        head.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    x = torch.rand(3, 3, 64, 64) * 2 - 1
    cls, hm = score_faces(model, x, flip=True)
    assert hm is None and ran == ["cls"]
    with torch.inference_mode():
        full = model(torch.cat([x, x.flip(-1)]))["cls"][:, 0]
    torch.testing.assert_close(cls, (full[:3] + full[3:]) / 2)
    ran.clear()
    _, hm = score_faces(model, x, flip=False, want_heatmap=True)
    assert sorted(ran) == ["cls", "hm"] and hm.shape == (3, 1, 16, 16)

"""ZOTrainer: a transformers.Trainer whose steps are ZO steps (random-weight models from configs)."""

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments  # noqa: E402

from zokernels import ZOSGD  # noqa: E402
from zokernels.hf import ZOTrainer  # noqa: E402


def _model():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(cfg)


def _dataset(n=32):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 50, (n, 8), generator=g)
    return [dict(input_ids=ids[i], attention_mask=torch.ones(8, dtype=torch.long), labels=int(ids[i, 0] % 2))
            for i in range(n)]


def _args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, learning_rate=1e-3, max_steps=6,
                report_to=[], use_cpu=True, logging_steps=1, save_strategy="no", seed=3, max_grad_norm=0.0)
    base.update(kw)
    return TrainingArguments(**base)


@pytest.mark.parametrize("mode", ["shadow", "inplace"])
def test_trainer_runs_zo_steps_with_accumulation(tmp_path, mode):
    model = _model()
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = ZOTrainer(model=model, args=_args(tmp_path, gradient_accumulation_steps=2), train_dataset=_dataset(),
                        zo_eps=1e-3, zo_mode=mode)
    seen = []
    compute_loss = trainer.compute_loss
    trainer.compute_loss = lambda m, inputs, **kw: (seen.append(inputs["input_ids"].shape[0]),
                                                     compute_loss(m, inputs, **kw))[1]
    out = trainer.train()
    opt = trainer.zo_optimizer
    assert isinstance(opt, ZOSGD) and opt.mode == mode
    assert opt.step_count == 6
    assert opt.stats["forwards"] == 2  # two perturbed closures per step...
    assert seen == [4] * (6 * 2 * 2)  # ...each over both micro-batches of 4
    assert out.training_loss > 0
    assert any(not torch.equal(p, start[n]) for n, p in model.named_parameters())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 6 and all(v > 0 for v in losses)


def test_trainer_follows_the_lr_schedule(tmp_path):
    trainer = ZOTrainer(model=_model(), args=_args(tmp_path, lr_scheduler_type="linear", max_steps=4),
                        train_dataset=_dataset())
    trainer.train()
    assert trainer.zo_optimizer.param_groups[0]["lr"] == pytest.approx(0.0)  # linear decay reached 0


def test_trainer_with_peft_trains_adapters_only(tmp_path):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(_model(), peft.LoraConfig(r=2, target_modules=["query", "value"],
                                                          task_type="SEQ_CLS"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainer = ZOTrainer(model=model, args=_args(tmp_path, max_steps=3), train_dataset=_dataset())
    trainer.train()
    trained = {n for g in trainer.zo_optimizer.param_groups for n in g["names"]}
    assert trained and all("lora" in n or "classifier" in n for n in trained)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n


def test_trainer_logs_the_projected_gradient_not_a_zero_grad_norm(tmp_path):
    trainer = ZOTrainer(model=_model(), args=_args(tmp_path, max_grad_norm=1.0, max_steps=4, logging_steps=2),
                        train_dataset=_dataset(), zo_eps=1e-3)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    assert all("grad_norm" not in h for h in logs)  # there is no gradient; the Trainer used to log 0.0
    assert all(h["zo_projected_grad"] > 0 for h in logs)

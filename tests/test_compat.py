"""Released-checkpoint mapping: round trip through the released key names, and the released computation.

The "released computation" below is written plainly from the released code's description (per-sentence
BERT layers with an additive mask, SentEmbedding, mean paragraph token, paragraph layers, VideoTokenPos,
cross-modal layers, pooler + seq_relationship, MLM head) on a Hugging Face ``BertModel`` holding the
exported ``text_encoder.bert.*`` weights, and must equal what this model computes after loading them.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from transformers import BertModel

from lfvila.models.compat import export_released, load_released, released_compatible
from lfvila.models.lfvila import ModelConfig, build_model
from lfvila.models.text import TextEncoder, TextEncoderConfig, load_bert_config, read_state_dict
from lfvila.tasks import TaskConfig

B, M, L, T = 2, 4, 6, 4


def tiny_cfg(bert_dir) -> ModelConfig:
    cfg = released_compatible(ModelConfig.tiny())
    return dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, bert_dir=str(bert_dir)), frames_per_clip=1,
                               max_frames=T)


@pytest.fixture(scope="module")
def source_and_export(bert_dir):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(bert_dir)).eval()
    with torch.no_grad():  # move every weight off its initialisation so a wrong mapping shows
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model, export_released(model)


def make_inputs(seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (B, M, L), generator=gen)
    mask = torch.ones(B, M, L, dtype=torch.long)
    mask[:, :, 4:] = 0
    ids[mask == 0] = 0
    return torch.randn(B, 3, T, 48, 80, generator=gen), ids, mask, torch.ones(B, M, dtype=torch.bool)


def test_export_uses_released_names(source_and_export):
    _, state = source_and_export
    for key in ("text_encoder.cls.predictions.decoder.weight", "text_encoder.cls.predictions.bias","video_encoder.patch_embed.proj.weight", "video_encoder.layers.0.blocks.0.attn.qkv.weight",
                "text_encoder.bert.embeddings.word_embeddings.weight",
                "text_encoder.bert.encoder.layer.5.output.dense.weight", "text_encoder.bert.pooler.dense.weight",
                "text_encoder.cls.predictions.transform.dense.weight", "text_encoder.seq_relationship.weight",
                "sent_embedding.position_embeddings.weight", "sent_embedding.segment_embeddings.weight",
                "sent_embedding.norm.weight", "video_token_pos.t_pos_embed", "video_token_pos.s_pos_embed",
                "video_local_proj.weight", "text_local_proj.weight", "video_global_proj.weight",
                "text_global_proj.weight"):
        assert key in state, key
    assert not any(k.startswith(("text.", "video.")) for k in state)


def test_round_trip_gives_identical_weights_and_outputs(bert_dir, source_and_export):
    source, state = source_and_export
    torch.manual_seed(1)
    target = build_model(tiny_cfg(bert_dir)).eval()
    report = load_released(target, state)
    assert report.unexpected == [] and report.missing == []
    assert "text.mlm_head.predictions.decoder.weight" in report.loaded
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    video, ids, mask, sentence_mask = make_inputs()
    with torch.no_grad():
        for model_out in zip(*(
            (m.encode_video(video)["clip"], m.encode_text(ids, mask, sentence_mask)["paragraph"]) for m in (source, target)
        )):
            assert torch.equal(*model_out)


def additive_mask(valid: torch.Tensor) -> torch.Tensor:
    """The released (old HF) convention: 0 where attended, the dtype's minimum elsewhere."""
    return (1.0 - valid.float())[:, None, None, :] * torch.finfo(torch.float32).min


def run(layers, hidden, valid):
    mask = additive_mask(valid)
    for layer in layers:
        hidden = layer(hidden, mask)
        hidden = hidden[0] if isinstance(hidden, tuple) else hidden
    return hidden


def test_loaded_model_computes_the_released_forward(bert_dir, source_and_export):
    _, state = source_and_export
    cfg = tiny_cfg(bert_dir)
    model = build_model(cfg).eval()
    load_released(model, state)
    video, ids, mask, sentence_mask = make_inputs(1)

    # --- released computation, written plainly from the exported tensors
    bert_cfg = load_bert_config(cfg.text.bert_dir)
    bert = BertModel(bert_cfg).eval()
    bert.load_state_dict({k[len("text_encoder.bert."):]: v for k, v in state.items()
                          if k.startswith("text_encoder.bert.")}, strict=False)
    layers = bert.encoder.layer
    s, p = cfg.text.sentence_layers, cfg.text.paragraph_layers
    lin = lambda x, name: F.linear(x, state[name + ".weight"], state[name + ".bias"])  # noqa: E731
    with torch.no_grad():
        c = bert_cfg.hidden_size
        h = run(layers[:s], bert.embeddings(input_ids=ids.view(B * M, L)), mask.view(B * M, L))
        sentence = F.normalize(lin(h[:, 0].view(B, M, c), "text_local_proj"), dim=-1)
        segments = torch.arange(M).repeat_interleave(L)
        e = h.view(B, M * L, c) + state["sent_embedding.position_embeddings.weight"][: M * L] \
            + state["sent_embedding.segment_embeddings.weight"][segments]
        e = F.layer_norm(e, (c,), state["sent_embedding.norm.weight"], state["sent_embedding.norm.bias"],
                         bert_cfg.layer_norm_eps)
        g = torch.cat([e.view(B, M, L, c)[:, :, 0].mean(1, keepdim=True), e], dim=1)
        g_valid = torch.cat([torch.ones(B, 1, dtype=torch.long), mask.view(B, M * L)], dim=1)
        g = run(layers[s:s + p], g, g_valid)
        paragraph = F.normalize(lin(g[:, 0], "text_global_proj"), dim=-1)

        final = model.video(video).final  # (B, T, 3, 5, Cv): the encoder itself is checked in its own tests
        cv = final.shape[-1]
        pooled = F.max_pool2d(final.permute(0, 1, 4, 2, 3).reshape(B * T, cv, 3, 5), (2, 3), stride=1)
        tokens = pooled.flatten(2).transpose(1, 2).reshape(B, T, 6, cv)
        clips = tokens.view(B, M, T // M, 6, cv).mean(dim=(2, 3))
        clip = F.normalize(lin(clips, "video_local_proj"), dim=-1)
        global_ = F.normalize(lin(clips.mean(1), "video_global_proj"), dim=-1)

        vt = lin(tokens, "video_token_proj")  # lfvila extension: video width 128 != text width 384
        vt = vt + state["video_token_pos.s_pos_embed"] + state["video_token_pos.t_pos_embed"][:, :T]
        vt = F.layer_norm(vt, (c,), state["video_token_pos.norm.weight"], state["video_token_pos.norm.bias"])
        fused = run(layers[s + p:], torch.cat([g, vt.flatten(1, 2)], dim=1),
                    torch.cat([g_valid, torch.ones(B, T * 6, dtype=torch.long)], dim=1))
        vtm = lin(torch.tanh(lin(fused[:, 0], "text_encoder.bert.pooler.dense")), "text_encoder.seq_relationship")
        t = F.gelu(lin(fused[:, 1:5], "text_encoder.cls.predictions.transform.dense"))
        t = F.layer_norm(t, (c,), state["text_encoder.cls.predictions.transform.LayerNorm.weight"],
                         state["text_encoder.cls.predictions.transform.LayerNorm.bias"], bert_cfg.layer_norm_eps)
        # the released decoder is its own matrix (only the bias is tied)
        mlm = t @ state["text_encoder.cls.predictions.decoder.weight"].T + state["text_encoder.cls.predictions.bias"]

        # --- this model
        ours_video = model.encode_video(video)
        ours_text = model.encode_text(ids, mask, sentence_mask)
        hidden = model.fuse(ours_text["tokens"], ours_text["token_mask"], ours_video["tokens"])

    close = dict(atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(ours_text["sentence"], sentence, **close)
    torch.testing.assert_close(ours_text["paragraph"], paragraph, **close)
    torch.testing.assert_close(ours_video["clip"], clip, **close)
    torch.testing.assert_close(ours_video["global"], global_, **close)
    torch.testing.assert_close(model.match_logits(hidden), vtm, **close)
    torch.testing.assert_close(model.mlm_logits(hidden[:, 1:5]), mlm, atol=1e-4, rtol=1e-4)


def test_stage1_checkpoint_leaves_cross_modal_part_missing(bert_dir, source_and_export):
    _, state = source_and_export
    cfg = tiny_cfg(bert_dir)
    n_stage1 = cfg.text.sentence_layers + cfg.text.paragraph_layers
    stage1 = {k: v for k, v in state.items() if not k.startswith("video_token_")
              and not (k.startswith("text_encoder.bert.encoder.layer.") and int(k.split(".")[4]) >= n_stage1)}
    stage1["some_other_head.weight"] = torch.zeros(1)
    model = build_model(cfg)
    report = load_released(model, stage1)
    assert report.unexpected == ["some_other_head.weight"]
    assert "text.mlm_head.predictions.decoder.weight" in report.loaded  # stage-1 releases hold BERT's decoder
    assert report.missing and all(k.startswith(("text.cross_layers.", "video_tokens.")) for k in report.missing)


def test_wrong_shapes_raise_naming_the_key(bert_dir, source_and_export):
    _, state = source_and_export
    bad = dict(state)
    bad["sent_embedding.segment_embeddings.weight"] = torch.zeros(4, 384)
    with pytest.raises(ValueError, match="segment_embeddings.*max_sentences"):
        load_released(build_model(tiny_cfg(bert_dir)), bad)


def test_released_compatible_switches():
    model_cfg, task_cfg = released_compatible(ModelConfig.tiny(), TaskConfig())
    assert model_cfg.video.clip_features == "final"
    assert task_cfg.mtc_reference_negatives and task_cfg.vtm_reference_pairing
    assert ModelConfig.tiny().video.clip_features == "local"  # the paper's intent stays the default


def test_bert_large_style_directory_initialises_the_encoder(bert_dir, tmp_path):
    """A BertForPreTraining checkpoint ("bert." prefix, TF-era gamma/beta names, cls.* heads) loads too."""
    state = read_state_dict(bert_dir)
    renamed = {}
    for key, value in state.items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta")
        renamed["bert." + key] = value
    hidden = state["embeddings.word_embeddings.weight"].shape[1]
    renamed["cls.predictions.transform.dense.weight"] = torch.full((hidden, hidden), 0.5)
    renamed["cls.predictions.bias"] = torch.arange(state["embeddings.word_embeddings.weight"].shape[0]).float()
    torch.save(renamed, tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((bert_dir / "config.json").read_text())
    cfg = dict(sentence_layers=2, paragraph_layers=2, cross_layers=2)
    large_style = TextEncoder(TextEncoderConfig(bert_dir=str(tmp_path), **cfg))
    plain = TextEncoder(TextEncoderConfig(bert_dir=str(bert_dir), **cfg))
    for (name, a), (_, b) in zip(large_style.state_dict().items(), plain.state_dict().items()):
        if name.startswith(("embeddings.", "sentence_layers.", "paragraph_layers.", "cross_layers.")):
            assert torch.equal(a, b), name
    assert torch.equal(large_style.mlm_head.predictions.transform.dense.weight, torch.full((hidden, hidden), 0.5))
    assert torch.equal(large_style.mlm_head.predictions.decoder.bias, renamed["cls.predictions.bias"])


def test_released_decoder_loads_and_every_dropped_key_is_reported(bert_dir, source_and_export, caplog):
    """The released MLM decoder is its own trained matrix: it is loaded, not tied to the word embeddings
    and dropped; buffers and the untrained local tap are dropped with their reason, logged by name."""
    _, state = source_and_export
    state = dict(state)
    decoder = torch.randn_like(state["text_encoder.cls.predictions.decoder.weight"])
    state["text_encoder.cls.predictions.decoder.weight"] = decoder
    state["text_encoder.bert.embeddings.position_ids"] = torch.arange(8)[None]
    state["video_encoder.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(4, dtype=torch.long)
    state["video_encoder.norm_local.weight"] = torch.ones(3)
    model = build_model(tiny_cfg(bert_dir))
    with caplog.at_level("INFO", logger="lfvila.models.compat"):
        report = load_released(model, state)
    assert torch.equal(model.text.mlm_head.predictions.decoder.weight, decoder)
    assert not torch.equal(model.text.mlm_head.predictions.decoder.weight, model.text.embeddings.word_embeddings.weight)
    assert report.dropped == {
        "text_encoder.bert.embeddings.position_ids": "a buffer this model recomputes",
        "video_encoder.layers.0.blocks.0.attn.relative_position_index": "a buffer this model recomputes",
        "video_encoder.norm_local.weight": "the released encoder's local tap, never used by the released model (untrained)",
    }
    assert report.missing == [] and report.unexpected == []
    for key in report.dropped:
        assert f"dropped: {key}" in caplog.text


def test_stage2_trains_the_decoder_and_keeps_the_word_embeddings_frozen(bert_dir):
    from lfvila.tasks import build_task

    model = build_model(tiny_cfg(bert_dir))
    task = build_task(model, TaskConfig(stage=2))
    trained = {id(p) for p in task.trainable_parameters()}
    assert id(model.text.mlm_head.predictions.decoder.weight) in trained
    assert id(model.text.embeddings.word_embeddings.weight) not in trained

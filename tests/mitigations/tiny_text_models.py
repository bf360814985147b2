"""Tiny random transformers models built offline: a text classifier and a seq2seq (text2text) model, each with a
word-level tokenizer, saved with safetensors as a local model folder."""

from __future__ import annotations

from pathlib import Path

WORDS = ["a", "photo", "of", "doctor", "chef", "at", "the", "beach", "shirtless", "cage", "person", "fully",
         "clothed", "party", ","]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]


def _tokenizer(folder: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                        cls_token="[CLS]", sep_token="[SEP]", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return tokenizer, len(vocab)


def build_tiny_classifier(folder: Path, labels: tuple[str, ...] = ("safe", "unsafe"),
                          favoured: str | None = None) -> Path:
    """A random classifier; with ``favoured``, its output bias makes that label win for every text (p > 0.99)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder.mkdir(parents=True, exist_ok=True)
    _, vocab_size = _tokenizer(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64, num_labels=len(labels),
                        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)})
    model = BertForSequenceClassification(config)
    if favoured is not None:
        with torch.no_grad():
            model.classifier.weight.zero_()
            model.classifier.bias.fill_(0.0)
            model.classifier.bias[labels.index(favoured)] = 8.0
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_seq2seq(folder: Path) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = _tokenizer(folder)
    torch.manual_seed(0)
    config = T5Config(vocab_size=vocab_size, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      decoder_start_token_id=tokenizer.pad_token_id)
    T5ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    return folder


def build_tiny_causal_lm(folder: Path) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer, vocab_size = _tokenizer(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab_size, n_embd=16, n_layer=1, n_head=2, n_positions=64,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder, safe_serialization=True)
    return folder

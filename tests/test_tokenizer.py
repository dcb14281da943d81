from transformers import AutoTokenizer

from evomerge.demo.tokenizer import GREEK_NUMERALS, SCRIPTS, build_tokenizer


def test_round_trip_every_symbol_and_bos():
    tok = build_tokenizer()
    text = "gr hello world=12+34 " + "".join(SCRIPTS.values()) + " " + GREEK_NUMERALS
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id
    assert len(ids) == len(text) + 1  # one token per character
    assert tok.unk_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True) == text
    assert 100 <= len(tok) <= 120


def test_saves_and_loads_with_auto_classes_keeping_left_padding(tmp_path):
    build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert tok.padding_side == "left"
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2
    assert tok.decode(tok("gr ab=αβ")["input_ids"], skip_special_tokens=True) == "gr ab=αβ"

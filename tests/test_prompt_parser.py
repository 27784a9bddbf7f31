import pytest

from modules.text.prompt_parser import BREAK, Fragment, extract_lora_tags, parse_prompt_attention
from modules.text.tokenizer import BOS_ID, EOS_ID, get_tokenizer, tokenize_fragment


def weights(prompt: str) -> list[tuple[str, float]]:
    return [(f.text, round(f.weight, 6)) if not f.is_break else ("BREAK", -1) for f in parse_prompt_attention(prompt)]


# --- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_known_ids_from_vocab() -> None:
    tok = get_tokenizer()
    ids = tokenize_fragment("a red circle")
    assert len(ids) == 3
    # The ids are those of the vocabulary file's word-final entries.
    assert ids[:2] == [tok.token_id("a</w>"), tok.token_id("red</w>")] == [320, 736]
    assert tok.token_id("<start_of_text>") == BOS_ID == 49406
    assert tok.token_id("<end_of_text>") == EOS_ID == 49407
    assert BOS_ID not in ids and EOS_ID not in ids
    assert tok.decode(ids).strip() == "a red circle"


def test_tokenizer_cleans_like_clip() -> None:
    assert tokenize_fragment("  A\tRED \n circle ") == tokenize_fragment("a red circle")
    assert tokenize_fragment("") == []
    assert get_tokenizer() is get_tokenizer()


# --- emphasis --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat", [("a cat", 1.0)]),
        ("(cat)", [("cat", 1.1)]),
        ("((cat))", [("cat", 1.21)]),
        ("[cat]", [("cat", round(1 / 1.1, 6))]),
        ("(cat:1.3)", [("cat", 1.3)]),
        ("(cat: 0.5 )", [("cat", 0.5)]),
        ("a (b:1.5) c", [("a ", 1.0), ("b", 1.5), (" c", 1.0)]),
        ("(a (b:1.5) c:1.2)", [("a ", 1.2), ("b", 1.8), (" c", 1.2)]),
        ("([cat])", [("cat", 1.0)]),
        (r"\(cat\)", [("(cat)", 1.0)]),
        (r"(a \[b\])", [("a [b]", 1.1)]),
        (r"a \\ b", [("a \\ b", 1.0)]),
        ("a:b", [("a:b", 1.0)]),
        ("(a:b)", [("a:b", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_emphasis(prompt: str, expected: list[tuple[str, float]]) -> None:
    assert weights(prompt) == expected


def test_unbalanced_brackets_are_tolerated() -> None:
    assert weights("a (b c") == [("a ", 1.0), ("b c", 1.1)]
    assert weights("a ] b) c") == [("a ] b) c", 1.0)]
    assert weights("[[a") == [("a", round(1 / 1.21, 6))]
    assert weights("a:1.5) b") == [("a:1.5) b", 1.0)]


def test_break() -> None:
    frags = parse_prompt_attention("a cat BREAK a dog")
    assert frags == [Fragment("a cat", 1.0), BREAK, Fragment("a dog", 1.0)]
    assert frags[1].is_break
    # Only the upper-case whole word breaks.
    assert not any(f.is_break for f in parse_prompt_attention("break BREAKFAST Break"))
    # A BREAK inside brackets still breaks and is not weighted.
    assert weights("(a BREAK b)") == [("a", 1.1), ("BREAK", -1), ("b", 1.1)]


def test_extract_lora_tags() -> None:
    text, loras = extract_lora_tags("a cat <lora:cute style-v1.2:0.8>, <lora:other> <hypernet:x:1> <lora:bad:x>")
    assert loras == [("cute style-v1.2", 0.8), ("other", 1.0)]
    assert text == "a cat ,  <hypernet:x:1> <lora:bad:x>"
    assert extract_lora_tags("plain") == ("plain", [])
    assert extract_lora_tags("<lora:neg:-0.5>")[1] == [("neg", -0.5)]

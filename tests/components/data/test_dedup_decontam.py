"""Near-dup removal and n-gram decontamination on small hand-made prompts."""

import numpy as np
from datasketch import MinHash

from components.data.decontam import EvalIndex
from components.data.dedup import _shingle_hashes, exact_dedup, jaccard, minhash_signatures, near_dedup, shingles
from components.data.normalize import prompt_id

LONG = ("The farmer planted rows of tomatoes beside the old stone wall and watered them every "
        "morning before the sun climbed over the eastern hills of the quiet valley")


def _row(prompt: str) -> dict:
    return {"id": prompt_id(prompt), "prompt": prompt, "source": "s"}


def test_signatures_match_datasketch() -> None:
    texts = [LONG, "abc", LONG.upper()]
    hashes, offsets = _shingle_hashes(texts, 5)
    sigs = minhash_signatures(texts, shingle=5, num_perm=64)
    ends = list(offsets[1:]) + [len(hashes)]
    for r in range(len(texts)):
        m = MinHash(num_perm=64, seed=1, hashfunc=lambda x: x)
        m.update_batch([int(h) for h in hashes[offsets[r] : ends[r]]])
        assert np.array_equal(m.hashvalues, sigs[r])
    assert np.array_equal(sigs[0], sigs[2])  # shingles are taken from the lower-cased text
    # "abc" is shorter than one shingle: one hash for the whole text
    assert offsets[2] - offsets[1] == 1


def test_near_dedup_keeps_smallest_id_per_cluster() -> None:
    a = LONG
    b = LONG.replace("tomatoes", "potatoes")  # one word changed
    c = LONG.replace("morning", "evening")
    for x in (b, c):
        # precondition from the definition: a 146-char prompt loses/gains ~10 of ~140 shingles
        assert jaccard(shingles(a, 5), shingles(x, 5)) >= 0.85
    other = "A completely different prompt about sailing boats across the wide grey northern sea at dawn"
    rows = [_row(p) for p in (a, other, b, c)]
    kept, removed = near_dedup(rows, threshold=0.85, shingle=5, num_perm=128)
    cluster = sorted(r["id"] for r in rows if r["prompt"] != other)
    assert sorted(r["id"] for r in kept) == sorted([cluster[0], prompt_id(other)])
    assert len(removed) == 2 and all(rep == cluster[0] for _, rep in removed)


def test_near_dedup_never_merges_different_numbers_or_operators() -> None:
    rows = [_row("What is 12 + 7? Give only the final number."), _row("What is 12 + 8? Give only the final number."),
            _row("What is 4 / 2 + 2 / 2? Give only the final number."),
            _row("What is 4 / 2 / 2 + 2? Give only the final number.")]
    kept, removed = near_dedup(rows, threshold=0.5, shingle=5, num_perm=128)
    assert len(kept) == 4 and not removed
    # the same prompts with words changed but the same math skeleton do merge at 0.5
    rows.append(_row("What is 12 + 7? Give only the final answer."))
    kept, removed = near_dedup(rows, threshold=0.5, shingle=5, num_perm=128)
    assert len(kept) == 4 and len(removed) == 1


def test_exact_dedup_keeps_first() -> None:
    rows = [dict(_row("x y"), n=0), dict(_row("z"), n=1), dict(_row("x y"), n=2)]
    kept, removed = exact_dedup(rows)
    assert [r["n"] for r in kept] == [0, 1] and [r["n"] for r in removed] == [2]


def test_decontam_short_and_long_prompts() -> None:
    ix = EvalIndex(13)
    ix.add("What is 23 + 19? Give only the final number.")  # 12 tokens: matched as a whole
    ix.add(LONG)  # 27 tokens: matched by 13-grams
    assert ix.match("what is 23 + 19 ?  Give only the final number.") == "exact"
    assert ix.match("Warm up first. What is 23 + 19? Give only the final number.") == "ngram"  # contains it
    assert ix.match("What is 23 + 18? Give only the final number.") is None
    assert ix.match("Please answer: " + LONG) == "ngram"
    assert ix.match(" ".join(LONG.split()[:12])) == "ngram"  # short prompt inside an eval prompt
    assert ix.match("The farmer planted rows of corn") is None


def test_decontam_ignores_shared_template() -> None:
    tail = " You may use +, -, * and /, and each number exactly once. Give only the equation."
    evals = [f"Using the numbers [{a}, {b}], make {a + b}." + tail for a, b in [(1, 2)]]
    train = [f"Using the numbers [{a}, {b}], make {a * b}." + tail for a, b in [(3, 4), (5, 6), (7, 8)]]
    ix = EvalIndex(13)
    for e in evals:
        ix.add(e)
    # the tail n-grams occur in 1 eval + 3 train prompts = 4 >= template_df 3: boilerplate
    assert ix.drop_template_grams(train, template_df=3) > 0
    assert [ix.match(t) for t in train] == [None, None, None]
    strict = EvalIndex(13)
    strict.add(evals[0])
    strict.drop_template_grams(train, template_df=0)  # disabled: the tail alone is overlap
    assert [strict.match(t) for t in train] == ["ngram"] * 3

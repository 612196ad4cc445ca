"""Hand-made fixture rows shared by the curation tests (written to tmp_path by each test)."""

import re
from types import SimpleNamespace

import pytest

# Ten distinct long prompts: no two share a 13-gram or come near the 0.85 shingle Jaccard.
BASE = [
    "A baker fills 12 trays with 9 rolls each and sells all but 15 of them at the market; how many rolls did she sell?",
    "Three friends split a restaurant bill evenly after adding a tip, and each of them pays exactly 24 dollars; what was the total?",
    "The library shelf holds novels, atlases and poetry books, and the librarian counts 41 novels, 7 atlases and 18 poetry books there.",
    "A cyclist rides along the coastal path at a steady pace, covering 18 kilometres each hour for 4 hours before resting.",
    "In the school garden the children planted sunflowers in 6 neat rows, with 14 sunflowers standing tall in every row.",
    "A train leaves the northern station carrying 230 passengers, drops 45 at the first stop and collects 12 more at the second.",
    "The museum sold tickets all weekend long: 310 on Saturday morning, 275 on Sunday afternoon, and none at all on Monday.",
    "A painter mixes blue and yellow paint in buckets, using 3 litres of blue for every 5 litres of yellow in each bucket.",
    "Rain filled the empty water tank by 8 centimetres each day during the stormy week, until it reached a depth of 56 centimetres.",
    "A chess club meets on Thursday evenings, and this season 16 players each played every other player exactly once in the league.",
]
ANSWERS = ["93", "\\boxed{72}", "66", "72", "84", "197", "$585$", "8", "7", "1,200"]
CANONICAL = ["93", "72", "66", "72", "84", "197", "585", "8", "7", "1200"]

EVAL_LONG = "An orchard has apple trees planted along the river bank and the keeper counts the ripe apples on every single tree each autumn."
EVAL_SHORT = "What is 23 + 19? Give only the final number."


def numeric(task: str, answer: str, meta: dict) -> bool:
    """Verify callback used by the tests: an answer is checkable when it is a number."""
    return re.fullmatch(r"-?\d+(\.\d+)?", answer) is not None


@pytest.fixture
def numeric_verify():
    return numeric


@pytest.fixture
def texts() -> SimpleNamespace:
    """The hand-made prompts and answers (a fixture, so test modules need not import conftest)."""
    return SimpleNamespace(BASE=BASE, ANSWERS=ANSWERS, CANONICAL=CANONICAL, EVAL_LONG=EVAL_LONG, EVAL_SHORT=EVAL_SHORT)

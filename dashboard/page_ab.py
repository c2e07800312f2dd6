"""A/B page: a blind preference study. One pair at a time (sides randomised, control pairs mixed in by
`artifix ab export`); every click is stored at once in the label store under this session's reviewer; the key
file is not even read until this reviewer has answered every pair, then the win rates are shown.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from artifix.review import ab
from artifix.errors import UserError

from .state import Dash


def answer(d: Dash, study: str, pair: int, choice: str) -> None:
    """Record one answer (button callback)."""
    d.store.add_ab_answers(study, {pair: choice}, d.reviewer)


def render(d: Dash) -> None:
    """The A/B page."""
    st.header("Blind A/B")
    folder = st.text_input("study folder", value=str(d.opts.get("study") or "artifix-ab"), key="ab-folder",
                           help="written by 'artifix ab export'; the key file stays elsewhere")
    try:
        study = ab.load_study(folder)
    except UserError as e:
        st.info(str(e))
        return
    mine = d.store.ab_answers(study["study"], d.reviewer)
    answered = {int(p): a for p, a in zip(mine.pair, mine.answer)}
    n = study["n_pairs"]
    todo = [p for p in study["pairs"] if int(p["pair"]) not in answered]
    st.progress(len(answered) / max(n, 1), text=f"{len(answered)} of {n} pairs answered by {d.reviewer}")
    if todo:
        pair_view(d, Path(folder), study, todo[0])
        return
    results(d, folder, study)


def pair_view(d: Dash, folder: Path, study: dict, p: dict) -> None:
    """One pair and its three answer buttons."""
    st.markdown(f"**Pair {p['pair'] + 1} of {study['n_pairs']}.** {study['question']}")
    left, right = st.columns(2)
    left.image(str(folder / p["left"]), caption="left", width=256)
    right.image(str(folder / p["right"]), caption="right", width=256)
    cols = st.columns(3)
    for col, choice in zip(cols, ab.ANSWERS):
        col.button(f"{choice}", key=f"ab-{p['pair']}-{choice}", on_click=answer, args=(d, study["study"], int(p["pair"]), choice),
                   width="stretch")
    st.caption("Which side is the repair, and which pairs are the random-unit control, is shown once you have answered every pair.")


def results(d: Dash, folder: str, study: dict) -> None:
    """The key, read now: this reviewer's and all reviewers' win rates."""
    key_path = st.text_input("key file", value=str(d.opts.get("ab_key") or ab.default_key_path(folder)), key="ab-key")
    try:
        key = ab.load_key(key_path, study["study"])
    except UserError as e:
        st.warning(f"You answered every pair. {e}")
        return
    mine = ab.score(key, d.store.ab_answers(study["study"], d.reviewer))
    st.success(f"Done. Your answers: {ab.summary_line(mine)}")
    st.markdown(ab.card_section(mine))
    everyone = ab.score(key, d.store.ab_answers(study["study"]))
    if len(everyone["reviewers"]) > 1:
        st.markdown(f"All {len(everyone['reviewers'])} reviewers: {ab.summary_line(everyone)}")

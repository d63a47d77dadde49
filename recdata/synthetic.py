"""The embedded default dataset: a seeded synthetic shop with text a sentence encoder can read.

Catalogue: a department > subcategory tree (:mod:`recdata.synthetic_vocab`), each item titled
from its brand, modifiers, product noun and a key attribute, e.g. ``"Optivue LED Binocular
Compound Microscope, 40X-1000X"``. Popularity is Zipf-like within each subcategory, so most
items form a long tail; a share of items is created late, near the end of the event window, and
is almost never seen (the naturally new items).

Events: every user has latent interests (a Dirichlet mixture over 1-3 subcategories, often in
one department), a favourite brand and an activity level. A session is a chain: sometimes a
search whose query names the next item's product, then views and clicks that mostly stay on the
previous item's product type, brand or subcategory, with some switching and exploration; some
clicks are carted, some carts purchased at the end of the session. So the next item is
predictable from the session well above popularity, from text alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from recdata.schema import Dataset, validate_catalogue, validate_events
from recdata.synthetic_vocab import BRANDS, DEPARTMENTS, DESCRIPTION_TEMPLATES

log = logging.getLogger(__name__)

SOURCE = "synthetic"
T0 = 1_704_067_200  # 2024-01-01 00:00 UTC: the event window opens
DAY = 86_400
SPAN_DAYS = 90  # events are spread over this many days
LATE_WINDOW = (0.85, 0.97)  # late items are created in this fraction of the event window
LATE_SEEN_SHARE = 0.10  # share of late items that get one or two views after their creation
MIN_SESSION_GAP = 2 * 3600  # seconds between the end of a session and the next one

P_SEARCH_START = 0.45  # a session opens with a search
P_SEARCH_SWITCH = 0.40  # a switch to another interest is preceded by a search
P_EXPLORE = 0.05  # next item is drawn from the whole catalogue
P_SWITCH = 0.12  # next item comes from another of the user's interests
P_SAME_NOUN = 0.40  # next item is the same product type as the previous one
P_SAME_BRAND = 0.15  # next item is the previous item's brand, same subcategory
P_CLICK = 35 / 75  # an item event is a click rather than a view
P_CART = 0.30  # a click is followed by adding the item to the cart
P_PURCHASE = 0.60  # a carted item is bought at the end of the session


@dataclass
class _Subcategory:
    department: str
    name: str
    nouns: list[str]
    mods: list[str]
    attrs: dict[str, list[str]]
    uses: list[str]


@dataclass
class _Items:
    """The generated catalogue as arrays the event simulation indexes by item position."""

    sub: np.ndarray  # (n_items,) subcategory index
    noun: np.ndarray  # (n_items,) noun index within the subcategory
    brand: list[str]
    mods: list[list[str]]
    key_attr: list[str]  # the attribute value in the title
    late: np.ndarray  # (n_items,) bool
    created_ts: np.ndarray  # (n_items,) int64
    frame: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


class _PoolSampler:
    """Popularity-weighted draws from named pools of items (one cumulative weight per pool)."""

    def __init__(self, rng: np.random.Generator, weight: np.ndarray) -> None:
        self._rng = rng
        self._weight = weight
        self._pools: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def add(self, key: tuple, item_idx: list[int]) -> None:
        idx = np.asarray(item_idx, dtype=np.int64)
        self._pools[key] = (idx, np.cumsum(self._weight[idx]))

    def draw(self, key: tuple) -> int | None:
        """One item index from the pool, or None when there is no such pool."""
        pool = self._pools.get(key)
        if pool is None:
            return None
        idx, cum = pool
        pos = int(np.searchsorted(cum, self._rng.random() * cum[-1], side="right"))
        return int(idx[min(pos, len(idx) - 1)])


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split("|")]


def _load_vocab() -> list[_Subcategory]:
    return [
        _Subcategory(dept, name, _split(v["nouns"]), _split(v["mods"]),
                     {k: _split(vals) for k, vals in v["attrs"].items()}, _split(v["uses"]))
        for dept, subs in DEPARTMENTS.items() for name, v in subs.items()
    ]


def _capitalise(text: str) -> str:
    # str.title() would turn "USB" into "Usb"; only raise each word's first letter.
    return " ".join(word[:1].upper() + word[1:] for word in text.split())


def _check_args(n_items: int, n_users: int, late_item_share: float,
                sessions_per_user: tuple[int, int], zipf_a: float) -> None:
    if n_items < 1 or n_users < 1:
        raise ValueError(f"n_items and n_users must be >= 1; got n_items={n_items}, "
                         f"n_users={n_users}")
    if not 0.0 <= late_item_share < 1.0:
        raise ValueError(f"late_item_share must be in [0, 1); got {late_item_share}")
    if round(late_item_share * n_items) >= n_items:
        raise ValueError(f"late_item_share={late_item_share} leaves no item to interact with "
                         f"among n_items={n_items}; lower it or raise n_items")
    lo, hi = sessions_per_user
    if not 1 <= lo <= hi:
        raise ValueError(f"sessions_per_user must be (min, max) with 1 <= min <= max; "
                         f"got {sessions_per_user}")
    if zipf_a < 0:
        raise ValueError(f"zipf_a must be >= 0 (0 = uniform popularity); got {zipf_a}")


def _make_items(rng: np.random.Generator, subs: list[_Subcategory], n_items: int,
                late_item_share: float) -> _Items:
    sub_share = rng.dirichlet(np.full(len(subs), 4.0))
    sub_idx = rng.choice(len(subs), size=n_items, p=sub_share)
    late = np.zeros(n_items, dtype=bool)
    late[rng.choice(n_items, size=round(late_item_share * n_items), replace=False)] = True
    span = SPAN_DAYS * DAY
    created = np.where(
        late,
        T0 + rng.uniform(*LATE_WINDOW, size=n_items) * span,
        T0 - rng.uniform(30, 3 * 365, size=n_items) * DAY,
    ).astype(np.int64)
    width = max(5, len(str(n_items)))
    rows, nouns, brands, mods_all, key_attrs = [], [], [], [], []
    for i, s in enumerate(sub_idx):
        sub = subs[s]
        dept_brands = BRANDS[sub.department]
        # Brands are Zipf-like within a department too: a few big names, several small ones.
        brand_p = 1.0 / np.arange(1, len(dept_brands) + 1)
        brand = dept_brands[rng.choice(len(dept_brands), p=brand_p / brand_p.sum())]
        n = int(rng.integers(len(sub.nouns)))
        noun = sub.nouns[n]
        fitting = [m for m in sub.mods if m.lower() not in noun.lower()]
        k = min(len(fitting), int(rng.integers(1, 3)))
        mods = [fitting[j] for j in np.sort(rng.choice(len(fitting), size=k, replace=False))]
        attrs = {key: vals[int(rng.integers(len(vals)))] for key, vals in sub.attrs.items()}
        key_attr = next(iter(attrs.values()))
        title = f"{brand} {_capitalise(' '.join(mods + [noun]))}, {key_attr}"
        use_a, use_b = rng.choice(sub.uses, size=2, replace=False)
        attr_key, attr_value = next(iter(attrs.items()))
        template = DESCRIPTION_TEMPLATES[int(rng.integers(len(DESCRIPTION_TEMPLATES)))]
        description = template.format(
            brand=brand, noun=noun, mods=" ".join(mods) or "practical", use_a=use_a,
            use_b=use_b, attr_key=attr_key, attr_value=attr_value)
        rows.append({"item_id": f"I{i + 1:0{width}d}", "title": title,
                     "category": f"{sub.department} > {sub.name}", "brand": brand,
                     "description": description[:1].upper() + description[1:],
                     "attributes": attrs, "created_ts": int(created[i])})
        nouns.append(n)
        brands.append(brand)
        mods_all.append(mods)
        key_attrs.append(key_attr)
    frame = pd.DataFrame(rows, columns=["item_id", "title", "category", "brand", "description",
                                        "attributes", "created_ts"])
    return _Items(sub_idx, np.asarray(nouns), brands, mods_all, key_attrs, late, created, frame)


def _make_sampler(rng: np.random.Generator, subs: list[_Subcategory], items: _Items,
                  zipf_a: float) -> _PoolSampler:
    """Pools of interactable (not late) items, Zipf-weighted by a random rank per subcategory."""
    weight = np.zeros(len(items.sub))
    members: dict[tuple, list[int]] = {}
    for s in range(len(subs)):
        idx = np.flatnonzero((items.sub == s) & ~items.late)
        ranks = rng.permutation(len(idx))
        weight[idx] = 1.0 / (ranks + 1.0) ** zipf_a
        for i in idx.tolist():
            for key in (("sub", s), ("noun", s, int(items.noun[i])), ("brand", s, items.brand[i])):
                members.setdefault(key, []).append(i)
    sampler = _PoolSampler(rng, weight)
    for key, idx_list in members.items():
        sampler.add(key, idx_list)
    sampler.add(("all",), np.flatnonzero(~items.late).tolist())
    return sampler


def _make_query(rng: np.random.Generator, subs: list[_Subcategory], items: _Items, i: int) -> str:
    """What a shopper looking for item i types: its product noun, maybe a modifier/brand/spec."""
    words = [subs[items.sub[i]].nouns[items.noun[i]]]
    if items.mods[i] and rng.random() < 0.5:
        words.insert(0, items.mods[i][int(rng.integers(len(items.mods[i])))])
    if rng.random() < 0.12:
        words.insert(0, items.brand[i])
    if rng.random() < 0.15:
        words.append(items.key_attr[i])
    return " ".join(words).lower()


class _EventLog:
    """Column lists of the events being generated; item -1 marks a search."""

    def __init__(self) -> None:
        self.user: list[int] = []
        self.item: list[int] = []
        self.ts: list[int] = []
        self.event: list[str] = []
        self.query: list[str | None] = []

    def add(self, user: int, item: int, ts: int, event: str, query: str | None = None) -> None:
        self.user.append(user)
        self.item.append(item)
        self.ts.append(ts)
        self.event.append(event)
        self.query.append(query)


def _simulate_user(rng: np.random.Generator, u: int, subs: list[_Subcategory], items: _Items,
                   sampler: _PoolSampler, sub_p: np.ndarray, sessions: tuple[int, int],
                   out: _EventLog) -> None:
    n_subs = len(subs)
    interests = [int(rng.choice(n_subs, p=sub_p))]
    for _ in range(int(rng.integers(0, 3))):
        dept = subs[interests[0]].department
        sib = [s for s in range(n_subs) if subs[s].department == dept and sub_p[s] > 0]
        pick = int(rng.choice(sib)) if rng.random() < 0.6 else int(rng.choice(n_subs, p=sub_p))
        if pick not in interests:
            interests.append(pick)
    mix = rng.dirichlet(np.ones(len(interests)))
    fav_brand = {d: b[int(rng.integers(len(b)))] for d, b in BRANDS.items()}
    brand_aff = rng.beta(2.0, 4.0)
    activity = rng.lognormal(np.log(2.4), 0.8)
    n_sessions = int(rng.integers(sessions[0], sessions[1] + 1))
    lengths = 1 + rng.poisson(activity, size=n_sessions)
    lengths[-1] += max(0, 3 - int(lengths.sum()))  # every user has at least 3 item events
    starts = np.sort(rng.uniform(0, SPAN_DAYS * DAY, size=n_sessions)).astype(np.int64) + T0
    t = T0 - MIN_SESSION_GAP

    def draw_in(s: int) -> int:
        pick = None
        if rng.random() < brand_aff:
            pick = sampler.draw(("brand", s, fav_brand[subs[s].department]))
        return sampler.draw(("sub", s)) if pick is None else pick

    for start, length in zip(starts.tolist(), lengths.tolist()):
        t = max(int(start), t + MIN_SESSION_GAP)
        focus = interests[int(rng.choice(len(interests), p=mix))]
        prev, carted, clicked = -1, [], []
        for step in range(length):
            r, intent = rng.random(), step == 0
            if step == 0:
                nxt = draw_in(focus)
            elif r < P_EXPLORE:
                nxt = sampler.draw(("all",))
            elif r < P_EXPLORE + P_SWITCH and len(interests) > 1:
                focus = interests[int(rng.choice(len(interests), p=mix))]
                nxt, intent = draw_in(focus), True
            elif r < P_EXPLORE + P_SWITCH + P_SAME_NOUN:
                nxt = sampler.draw(("noun", int(items.sub[prev]), int(items.noun[prev])))
            elif r < P_EXPLORE + P_SWITCH + P_SAME_NOUN + P_SAME_BRAND:
                nxt = sampler.draw(("brand", int(items.sub[prev]), items.brand[prev]))
            else:
                nxt = draw_in(int(items.sub[prev]))
            assert nxt is not None, "pools of the previous item's own keys always exist"
            if intent and rng.random() < (P_SEARCH_START if step == 0 else P_SEARCH_SWITCH):
                out.add(u, -1, t, "search", _make_query(rng, subs, items, nxt))
                t += 5 + int(rng.exponential(20))
            kind = "click" if rng.random() < P_CLICK else "view"
            out.add(u, nxt, t, kind)
            t += 10 + int(rng.exponential(60))
            if kind == "click":
                clicked.append(nxt)
                if rng.random() < P_CART:
                    out.add(u, nxt, t, "cart")
                    carted.append(nxt)
                    t += 10 + int(rng.exponential(40))
            prev = nxt
        for i in dict.fromkeys(carted):  # checkout at the end of the session
            if rng.random() < P_PURCHASE:
                out.add(u, i, t, "purchase")
                t += 5 + int(rng.exponential(30))


def _show_late_items(rng: np.random.Generator, items: _Items, log_: _EventLog) -> int:
    """Swap a few late views onto late items of the same subcategory; returns how many."""
    item = np.asarray(log_.item)
    ts = np.asarray(log_.ts)
    is_view = np.asarray(log_.event) == "view"
    after_search = np.r_[False, item[:-1] == -1]  # keep the item a query was typed for
    free = is_view & ~after_search
    ev_sub = np.where(item >= 0, items.sub[np.maximum(item, 0)], -1)
    shown = 0
    for i in np.flatnonzero(items.late).tolist():
        if rng.random() >= LATE_SEEN_SHARE:
            continue
        cand = np.flatnonzero(free & (ev_sub == items.sub[i]) & (ts > items.created_ts[i]))
        for pos in rng.choice(cand, size=min(len(cand), int(rng.integers(1, 3))), replace=False):
            log_.item[int(pos)] = i
            free[pos] = False
            shown += 1
    return shown


def generate_synthetic(
    n_items: int = 1500,
    n_users: int = 1000,
    seed: int = 0,
    late_item_share: float = 0.08,
    sessions_per_user: tuple[int, int] = (1, 4),
    zipf_a: float = 1.1,
) -> Dataset:
    """Generate the synthetic shop: a validated catalogue and event log, identical per seed.

    ``late_item_share`` of items are created near the end of the ~90-day event window and are
    mostly never seen; ``sessions_per_user`` is the inclusive (min, max) number of sessions a user
    has; ``zipf_a`` is the exponent of item popularity within a subcategory (0 = uniform).
    """
    _check_args(n_items, n_users, late_item_share, sessions_per_user, zipf_a)
    rng = np.random.default_rng(seed)
    subs = _load_vocab()
    items = _make_items(rng, subs, n_items, late_item_share)
    sampler = _make_sampler(rng, subs, items, zipf_a)
    # Interest in a subcategory is uneven (a few popular aisles); empty subcategories get none.
    has_items = np.bincount(items.sub[~items.late], minlength=len(subs)) > 0
    sub_p = rng.dirichlet(np.full(len(subs), 1.5)) * has_items
    sub_p /= sub_p.sum()
    out = _EventLog()
    for u in range(n_users):
        _simulate_user(rng, u, subs, items, sampler, sub_p, sessions_per_user, out)
    n_late_seen = _show_late_items(rng, items, out)

    item_ids = items.frame["item_id"].to_numpy()
    width = max(4, len(str(n_users)))
    events = pd.DataFrame({
        "user_id": [f"U{u + 1:0{width}d}" for u in out.user],
        "item_id": [None if i < 0 else item_ids[i] for i in out.item],
        "ts": np.asarray(out.ts, dtype=np.int64),
        "event": out.event,
        "query": out.query,
        "weight": 1.0,
    })
    catalogue = validate_catalogue(items.frame, SOURCE)
    events, report = validate_events(events, SOURCE, catalogue["item_id"])
    report.update(late_items=int(items.late.sum()), late_item_events=n_late_seen)
    log.info("synthetic: %d items (%d late), %d users, %d events", len(catalogue),
             report["late_items"], n_users, len(events))
    return Dataset(name=SOURCE, catalogue=catalogue, events=events, predefined=None, report=report)

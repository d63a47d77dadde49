"""A parsed ``Session`` against the loaded catalogue and towers: which events the user tower can
read, how each is explained, what the reranker's context is, and what to exclude.

Item ids the towers were trained on go in as ids (their vectors come from the item tower's
table); ids added to the catalogue later go in as inline items with their catalogue text, which
gives exactly the text-only vector the index holds for them; unknown ids are dropped with a
warning. Searches and inline items need a text encoder: an ID-only item tower drops them with a
warning. Only then is the session cut to the user tower's ``max_seq_len``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from engine.catalogue import CatalogueState
from engine.explain import event_reason
from engine.session import Event, Session, cut_warning


@dataclass
class ResolvedSession:
    """What the engine needs of one session after checking it against the catalogue."""

    session: Session
    k: int
    events: list[Event] = field(default_factory=list)  # the towers' events
    reasons: list[str] = field(default_factory=list)  # "because" phrase of each event
    hist_items: list[str | None] = field(default_factory=list)  # reranker context, per event
    hist_types: list[str] = field(default_factory=list)
    hist_queries: list[str | None] = field(default_factory=list)
    titles: dict[str, str] = field(default_factory=dict)  # hist_items id -> title
    exclude: list[str] = field(default_factory=list)  # history items + the session's exclude
    warnings: list[str] = field(default_factory=list)

    @property
    def n_item_events(self) -> int:
        return sum(t != "search" for t in self.hist_types)


def resolve_session(
    session: Session,
    k: int,
    state: CatalogueState,
    tower_index: Mapping[str, int],
    tower_texts: Sequence[str] | None,
    supports_text: bool,
    max_seq_len: int,
) -> ResolvedSession:
    """Check ``session``'s events against the catalogue and the towers (see module docstring)."""
    out = ResolvedSession(session=session, k=k, warnings=list(session.warnings))
    usable = []
    unknown: list[str] = []
    no_text = 0
    for number, event in enumerate(session.events):
        if event.item_id is not None:
            item_id = event.item_id
            if item_id not in tower_index and item_id not in state:
                unknown.append(item_id)
                continue
            out.exclude.append(item_id)
            if item_id in state:
                title = str(state.titles[state.row_of[item_id]])
            elif tower_texts is not None:
                title = tower_texts[tower_index[item_id]].split(". ")[0]
            else:
                title = item_id
            # a trained item re-described live (upsert) reads as its new text, the vector the
            # index holds for it, not the towers' trained one
            upserted = (supports_text and tower_texts is not None and item_id in tower_index
                        and item_id in state and str(state.texts[state.row_of[item_id]])
                        != tower_texts[tower_index[item_id]])
            if item_id in tower_index and not upserted:
                towers_event = Event(type=event.type, item_id=item_id)
            elif supports_text:
                text = str(state.texts[state.row_of[item_id]])
                towers_event = Event(type=event.type, item={"title": text})
            else:
                no_text += 1
                continue
            usable.append((towers_event, event_reason(event.type, title), item_id, None, title))
        elif not supports_text:
            no_text += 1
        elif event.item is not None:
            title = " ".join(str(event.item["title"]).split())
            key = f"inline:{number}"  # the reranker context shows its title
            towers_event = Event(type=event.type, item=dict(event.item))
            usable.append((towers_event, event_reason(event.type, title), key, None, title))
        else:
            towers_event = Event(type="search", query=event.query)
            usable.append((towers_event, event_reason("search", event.query), None, event.query,
                           None))
    if unknown:
        shown = ", ".join(repr(i) for i in list(dict.fromkeys(unknown))[:5])
        out.warnings.append(f"{len(unknown)} event(s) name item ids not in the catalogue "
                            f"({shown}); ignored them")
    if no_text:
        out.warnings.append(f"ignored {no_text} search/inline/new-item event(s): this run's item "
                            "tower is ID-only and cannot read text")
    if len(usable) > max_seq_len:
        out.warnings.append(cut_warning(len(usable), max_seq_len))
        usable = usable[-max_seq_len:]
    for towers_event, reason, hist_item, query, title in usable:
        out.events.append(towers_event)
        out.reasons.append(reason)
        out.hist_items.append(hist_item)
        out.hist_types.append(towers_event.type)
        out.hist_queries.append(query)
        if hist_item is not None and title is not None:
            out.titles[hist_item] = title
    out.exclude = list(dict.fromkeys(out.exclude + session.exclude))
    return out

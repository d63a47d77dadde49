"""``python -m recdata events check|export|repair LOG``: inspect, export or repair an event log.

``LOG`` is an ``events.log``, its folder, or a run's artifacts directory. ``export --out
FILE`` writes the events in the events contract (``.jsonl``, ``.csv`` or ``.parquet``), ready
for ``data=files data.options.events=FILE``; training can also read the log directly with
``data.options.event_log=LOG``. Errors: one ``error:`` line on stderr, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recdata.eventlog import read_events, scan
from recdata.eventlog_source import repair, resolve_log
from recdata.schema import DataError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recdata",
                                     description="Data tools (dataset statistics: "
                                                 "python -m recdata.stats data=...).")
    groups = parser.add_subparsers(dest="group", required=True)
    events = groups.add_parser("events", help="the service's event log")
    sub = events.add_subparsers(dest="command", required=True)
    for name, text in (("check", "verify every record; print counts as JSON"),
                       ("export", "write the events (events contract) to --out"),
                       ("repair", "drop records that fail their checksum (service stopped)")):
        command = sub.add_parser(name, help=text)
        command.add_argument("log", help="events.log, its folder, or a run's artifacts dir")
        if name == "export":
            command.add_argument("--out", required=True, help="a .jsonl, .csv or .parquet file")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "repair":
            kept, dropped = repair(args.log)
            print(json.dumps({"records_kept": kept, "bad_lines_dropped": dropped}))
            return 0
        path = resolve_log(args.log)
        if args.command == "check":
            found = scan(path)
            events = list(found.events())
            print(json.dumps({"log": str(path), "records": len(found.records),
                              "events": len(events), "last_seq": found.last_seq,
                              "torn_tail_bytes": found.torn_bytes,
                              "users": len({e["user_id"] for e in events})}))
            return 0
        out = Path(args.out)
        frame = read_events(path).drop(columns=["seq"])
        if out.suffix == ".parquet":
            frame.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            frame.to_csv(out, index=False)
        elif out.suffix in (".jsonl", ".ndjson"):
            frame.to_json(out, orient="records", lines=True)
        else:
            raise DataError(f"--out {out}: expected a .jsonl, .csv or .parquet file")
        print(f"wrote {len(frame)} events to {out}")
        return 0
    except DataError as err:  # EventLogError and EventLogCorrupt too
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

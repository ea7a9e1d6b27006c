"""OCM commands of the ``transferd`` CLI: shares, share, invite, contacts.

    transferd shares ls [--state pending]        received shares
    transferd shares accept ID | decline ID
    transferd share --to bob@mesh.example.org /data/run42 [--expires 7d]
    transferd share --revoke ID                  stop exporting, tell the recipient
    transferd share --list                       shares we sent, with their notifications
    transferd invite create                      prints the invite string
    transferd invite accept STRING
    transferd contacts
"""

from __future__ import annotations

import argparse
import json
import os
import re
from typing import Any

__all__ = ["add_commands", "parse_duration"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_duration(text: str) -> float:
    """``90``, ``30m``, ``12h``, ``7d``, ``2w`` → seconds (argparse type)."""
    match = _DURATION.match(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 30m, 12h or 7d")
    return float(match.group(1)) * _UNITS[match.group(2)]


def _client(args: argparse.Namespace) -> Any:
    from transferd.cli_jobs import make_client

    return make_client(args)


def _print(args: argparse.Namespace, answer: Any, line: str) -> None:
    print(json.dumps(answer, indent=2) if getattr(args, "json", False) else line)


def _share_line(s: dict[str, Any]) -> str:
    size = "?" if s.get("size") is None else str(s["size"])
    return f"{s['id']}\t{s['state']}\t{s['sender']}\t{s['name']}\t{size}"


def cmd_shares_ls(args: argparse.Namespace) -> int:
    answer = _client(args)._request("GET", "/shares", query={"state": args.state})
    if args.json:
        print(json.dumps(answer, indent=2))
    for share in [] if args.json else answer["shares"]:
        print(_share_line(share))
    return 0


def cmd_shares_accept(args: argparse.Namespace) -> int:
    answer = _client(args)._request("POST", f"/shares/{args.id}/accept")
    _print(args, answer, f"{answer['id']} accepted: job {answer['job_id']}")
    return 0


def cmd_shares_decline(args: argparse.Namespace) -> int:
    answer = _client(args)._request("POST", f"/shares/{args.id}/decline")
    _print(args, answer, f"{answer['id']} declined")
    return 0


def cmd_share(args: argparse.Namespace) -> int:
    from transferd.cli_exit import UsageError

    client = _client(args)
    if args.revoke:
        answer = client._request("DELETE", f"/ocm/sent/{args.revoke}")
        _print(args, answer, f"{answer['id']} revoked")
        return 0
    if args.list:
        answer = client._request("GET", "/ocm/sent")
        if args.json:
            print(json.dumps(answer, indent=2))
        else:
            for s in answer["shares"]:
                seen = ",".join(n["type"] for n in s["notifications"]) or "-"
                print(f"{s['id']}\t{s['state']}\t{s['to']}\t{s['path']}\t{seen}")
        return 0
    if not args.to or not args.path:
        raise UsageError("share: give --to user@provider and a PATH (or --revoke ID, --list)")
    body: dict[str, Any] = {"to": args.to, "path": os.path.abspath(args.path)}
    if args.expires:
        body["expires_s"] = args.expires
    answer = client._request("POST", "/ocm/sent", body=body)
    _print(args, answer, answer["id"])
    return 0


def cmd_invite_create(args: argparse.Namespace) -> int:
    answer = _client(args)._request("POST", "/ocm/invites")
    _print(args, answer, answer["invite"])
    return 0


def cmd_invite_accept(args: argparse.Namespace) -> int:
    answer = _client(args)._request("POST", "/ocm/invites/accept", body={"invite": args.invite})
    _print(args, answer, f"{answer['userID']}@{answer['provider']}")
    return 0


def cmd_contacts(args: argparse.Namespace) -> int:
    answer = _client(args)._request("GET", "/ocm/contacts")
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        for c in answer["contacts"]:
            print(f"{c['userID']}@{c['provider']}\t{c.get('name', '')}\t{c.get('email', '')}")
    return 0


def add_commands(
    sub: Any, client_parent: argparse.ArgumentParser, formatter: type[argparse.HelpFormatter]
) -> None:
    """Register the OCM commands on the top-level subparsers."""

    def parser(where: Any, name: str, help_: str, func: Any, epilog: str | None = None) -> Any:
        p = where.add_parser(name, help=help_, description=help_, epilog=epilog,
                             parents=[client_parent], formatter_class=formatter)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print the API's JSON answer")
        return p

    shares = sub.add_parser("shares", help="received OCM shares: list, accept, decline",
                            description="received OCM shares: list, accept, decline")
    shares_sub = shares.add_subparsers(dest="shares_command", metavar="ACTION", required=True)
    p = parser(shares_sub, "ls", "list received shares", cmd_shares_ls,
               "example:\n  transferd shares ls --state pending")
    p.add_argument("--state", choices=("pending", "accepted", "declined", "unshared"))
    p = parser(shares_sub, "accept", "accept a share: its transfer starts", cmd_shares_accept)
    p.add_argument("id", metavar="ID")
    p = parser(shares_sub, "decline", "decline a share", cmd_shares_decline)
    p.add_argument("id", metavar="ID")

    p = parser(sub, "share", "share a local folder with a remote user (OCM datatx)", cmd_share,
               "examples:\n  transferd share --to bob@mesh.example.org /data/run42 "
               "--expires 7d\n  transferd share --revoke ID\n  transferd share --list")
    p.add_argument("path", nargs="?", metavar="PATH")
    p.add_argument("--to", metavar="USER@PROVIDER")
    p.add_argument("--expires", type=parse_duration, metavar="DURATION",
                   help="a one-off copy: the share ends after this (e.g. 7d)")
    p.add_argument("--revoke", metavar="ID", help="withdraw a share (SHARE_UNSHARED)")
    p.add_argument("--list", action="store_true", help="list the shares sent")

    invite = sub.add_parser("invite", help="OCM invites", description="OCM invites")
    invite_sub = invite.add_subparsers(dest="invite_command", metavar="ACTION", required=True)
    parser(invite_sub, "create", "create an invite and print its string", cmd_invite_create)
    p = parser(invite_sub, "accept", "accept an invite string from another provider",
               cmd_invite_accept)
    p.add_argument("invite", metavar="STRING")

    parser(sub, "contacts", "remote users who accepted our invites or whose we accepted",
           cmd_contacts)

"""Write examples/tickets/: support tickets to classify into five queues (deterministic).

The second bundled example is classification, not fact Q&A: the answer is one label, scored
by label accuracy and macro-F1. Training and held-out tickets are written from different
sentence templates and different slot values (names, amounts, codes, features), so a model
must learn what makes a ticket a billing one, not recall a sentence.

    python tools/make_tickets.py            # rewrites examples/tickets/data/*.jsonl
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "examples" / "tickets" / "data"
LABELS = ("billing", "bug", "account", "feature_request", "outage")
SYSTEM = ("You triage support tickets for Loomquay, a workflow automation product. Reply with exactly one "
          "label: billing, bug, account, feature_request or outage.")

# (train templates, held-out templates) per label; {slots} are filled from SLOTS below.
TEMPLATES = {
    "billing": (
        ["I was charged {amount} twice this month, can you refund one?",
         "Our invoice {invoice} shows {seats} seats but we only have {seats2}.",
         "Why did my card get billed {amount} when I downgraded to {plan}?",
         "Please send a receipt for the {amount} payment from {month}.",
         "The VAT number on invoice {invoice} is wrong, can you reissue it?",
         "We paid by bank transfer in {month} but the account still says overdue.",
         "How do I switch our billing from monthly to yearly on {plan}?",
         "Can I get a credit for the {amount} overage charge? We didn't expect it."],
        ["Got an invoice for {amount} that doesn't match our {plan} price.",
         "Card declined message but the bank says {amount} left our account.",
         "Need the billing address on our invoices changed to our new office.",
         "Refund request: we cancelled before renewal and still paid {amount}."]),
    "bug": (
        ["The {feature} page shows a blank screen after I click Save.",
         "Workflow steps reorder themselves when I drag {feature} blocks.",
         "Error {code} appears every time I export {feature} to CSV.",
         "The date picker in {feature} shows the wrong month in {browser}.",
         "Duplicate rows get created when the {feature} trigger fires once.",
         "Search in {feature} ignores the filter I set and returns everything.",
         "The {feature} button does nothing in {browser}, no error either.",
         "Timezones are off by an hour in {feature} since the last update."],
        ["Clicking Run on a {feature} workflow spins forever, console says {code}.",
         "Saved filters in {feature} disappear after I reload the page.",
         "In {browser} the {feature} editor cuts off the last line of text.",
         "Numbers in {feature} exports come out with the wrong decimal separator."]),
    "account": (
        ["I can't log in, the reset email for {email} never arrives.",
         "Please remove {name} from our workspace, they left the company.",
         "How do I transfer ownership of the workspace to {name}?",
         "My two-factor phone is lost, how do I get back into {email}?",
         "Can you merge my two accounts, {email} and my old one?",
         "I need to change the email on my profile to {email}.",
         "{name} was locked out after too many password attempts.",
         "How do I delete my personal account but keep the team's data?"],
        ["Lost access to my authenticator app and now I'm stuck at login.",
         "Please rename our workspace and update the admin to {name}.",
         "Invite to {email} says expired, can you resend it?",
         "We want SSO users to stop getting password reset emails."]),
    "feature_request": (
        ["It would be great if {feature} could export to Excel directly.",
         "Could you add a dark mode to the {feature} editor?",
         "Please support webhooks from {feature} to our own endpoint.",
         "We'd love a way to schedule {feature} runs every 15 minutes.",
         "Any plans for a {feature} template library we can share?",
         "Can {feature} get keyboard shortcuts for the common actions?",
         "Feature idea: let us comment on individual {feature} steps.",
         "Would be nice to filter {feature} history by the person who ran it."],
        ["Suggestion: version history for {feature} so we can roll back.",
         "Is there any chance of a Slack integration for {feature} alerts?",
         "We would pay more for bulk editing in {feature}.",
         "Please consider letting {feature} read from Google Sheets."]),
    "outage": (
        ["Nothing loads at all, the whole app is down for our team since {time}.",
         "All our workflows stopped running at {time}, is there an incident?",
         "The API returns 503 for every request since {time}.",
         "Status page says operational but no one in {region} can reach the site.",
         "Every page times out for us in {region}, is Loomquay down?",
         "Scheduled runs didn't fire for anyone at {time}, the platform seems down.",
         "Login page won't load for the whole company, since {time}.",
         "Webhooks from every source stopped arriving at {time}."],
        ["Is there an outage? Our entire workspace has been unreachable since {time}.",
         "Your servers in {region} seem to be down, nothing responds.",
         "Since {time} every single run fails with a gateway timeout.",
         "The whole platform is offline for us and our customers right now."]),
}

SLOTS = {  # (train values, held-out values)
    "amount": (["$29", "$49", "$120", "$480", "$1,200"], ["$75", "$310", "$2,400"]),
    "invoice": (["INV-1041", "INV-2207", "INV-3318"], ["INV-5562", "INV-6690"]),
    "seats": (["12", "25", "40"], ["18", "60"]),
    "seats2": (["10", "20", "32"], ["15", "48"]),
    "plan": (["Crest", "Harbor"], ["Meridian", "Starter"]),
    "month": (["March", "June", "October"], ["January", "August"]),
    "feature": (["Forms", "Schedules", "Tables", "Reports", "Connectors"], ["Dashboards", "Approvals", "Inbox"]),
    "code": (["LQ-4012", "LQ-5023", "LQ-7110"], ["LQ-6604", "LQ-8891"]),
    "browser": (["Firefox", "Safari"], ["Edge", "Chrome"]),
    "email": (["dana@acme.io", "li@northwind.com"], ["sam@globex.net", "ana@initech.org"]),
    "name": (["Priya", "Marco", "Jonas"], ["Aiko", "Tomás"]),
    "time": (["9:40 UTC", "14:05 UTC", "this morning"], ["noon", "03:15 UTC"]),
    "region": (["Frankfurt", "Virginia"], ["Sydney", "São Paulo"]),
}
OPENERS = (["", "Hi, ", "Hello team, ", "Urgent: "], ["", "Hey, ", "Good morning. ", "Quick one: "])
CLOSERS = (["", " Thanks!", " Please help.", " Regards, ops team."], ["", " Cheers.", " Thank you.", " ASAP please."])


def _ticket(rng: random.Random, template: str, side: int) -> str:
    slots = {k: rng.choice(v[side]) for k, v in SLOTS.items()}
    return rng.choice(OPENERS[side]) + template.format(**slots) + rng.choice(CLOSERS[side])


def build(per_label_train: int = 64, per_label_heldout: int = 20, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    train, heldout = [], []
    for label in LABELS:
        for side, rows, n in ((0, train, per_label_train), (1, heldout, per_label_heldout)):
            seen: set[str] = set()
            while len(seen) < n:
                text = _ticket(rng, rng.choice(TEMPLATES[label][side]), side)
                if text in seen:
                    continue
                seen.add(text)
                user = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}]
                if side == 0:
                    rows.append({"messages": user + [{"role": "assistant", "content": label}]})
                else:
                    rows.append({"id": f"t{len(rows) + 1:03d}", "messages": user, "label": label})
    rng.shuffle(train)
    rng.shuffle(heldout)
    return train, heldout


def main() -> None:
    train, heldout = build()
    OUT.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.jsonl", train), ("heldout.jsonl", heldout)):
        (OUT / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {len(train)} training and {len(heldout)} held-out tickets to {OUT}")


if __name__ == "__main__":
    main()

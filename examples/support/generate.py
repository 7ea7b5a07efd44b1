"""Generate customer-support conversations for the fictional product "Loomquay".

Loomquay is an invented B2B workflow-automation and API platform made by the
equally invented Tarnwick Labs. Because it does not exist, a pre-trained chat
model (e.g. SmolLM2-135M) cannot know its prices, limits, menu paths or error
codes; after fine-tuning on train.jsonl it should. That makes the data a clean
test of whether fine-tuning taught the model new facts.

Outputs (in --out, default examples/support/data):

  facts.json           the 50 facts: id, topic, canonical statement, and `keys`
                       (groups of alternatives; an answer states the fact iff
                       every group has one alternative in it, case-insensitive,
                       whitespace collapsed).
  train.jsonl          chat conversations ({"messages": [...]}) with planted noise.
  heldout.jsonl        evaluation questions asked in wording never used in training.
  noise_manifest.json  every planted defect: 1-based line, kind, original line.

Only random.Random(seed) and, for joining two questions into one message, a second
stream seeded from it are used; all output is written in a fixed order, and nothing
depends on time or set ordering, so a rerun is byte-identical.

Usage: python examples/support/generate.py [--out DIR] [--seed 0]
"""

import argparse
import hashlib
import json
import random
import re
from pathlib import Path

# ---------------------------------------------------------------------------
# Facts. `ask`: training question cores; `held`: held-out cores (never used in
# training); `say`: answer variants, each containing the first alternative of
# every key group literally.
# ---------------------------------------------------------------------------

FACTS = [
    dict(id="F01", topic="pricing", statement="The Pebble plan costs $13 per seat per month.",
         keys=[["$13"]],
         ask=["How much is the Pebble plan?", "What does Pebble cost per seat?", "Pebble pricing?",
              "What's the per-seat price on your cheapest paid plan?",
              "How much would Pebble cost us per user each month?"],
         held=["What is the monthly charge per user for Pebble?",
               "If we pick the entry-level paid tier, what do we pay per seat monthly?",
               "Tell me the Pebble tier's seat price."],
         say=["The Pebble plan costs $13 per seat per month.",
              "Pebble is $13 per seat per month, billed monthly unless you switch to annual.",
              "It's $13 per seat each month on Pebble."]),
    dict(id="F02", topic="pricing", statement="The Crest plan costs $43 per seat per month.",
         keys=[["$43"]],
         ask=["How much is Crest?", "What's the Crest plan price per seat?", "crest cost per user?",
              "What do you charge per seat for the mid-tier plan?",
              "How much is the plan between Pebble and Summit?"],
         held=["Monthly seat price for the Crest tier, please.",
               "What would one Crest seat cost us a month?", "Quote me the per-user rate on Crest."],
         say=["Crest costs $43 per seat per month.", "The Crest plan is $43 per seat each month.",
              "Each Crest seat is $43 a month."]),
    dict(id="F03", topic="pricing", statement="The Summit plan costs $87 per seat per month.",
         keys=[["$87"]],
         ask=["How much is the Summit plan?", "Summit price per seat?",
              "What does your top self-serve plan cost?", "How much per user per month is Summit?",
              "what's summit run per seat"],
         held=["What's the seat price on Summit each month?",
               "How expensive is the highest self-serve tier per user?",
               "Price check: Summit, per seat, monthly?"],
         say=["Summit is $87 per seat per month.", "The Summit plan costs $87 per seat each month.",
              "Each Summit seat costs $87 a month."]),
    dict(id="F04", topic="pricing", statement="Annual billing gives 17% off the monthly price.",
         keys=[["17%", "17 percent"]],
         ask=["Is there a discount for paying yearly?", "How much do we save with annual billing?",
              "annual discount?", "What's the discount if we prepay for a year?",
              "Do you give anything off for annual plans?"],
         held=["How big is the price cut for choosing yearly billing?",
               "If we commit to twelve months upfront, what percentage do we save?",
               "What reduction applies to annual subscriptions?"],
         say=["Annual billing gives you 17% off the monthly price.",
              "Paying yearly saves 17 percent, so 17% off every plan.",
              "Yes, annual plans are 17% cheaper than monthly billing."]),
    dict(id="F05", topic="pricing",
         statement="Meridian is the enterprise plan, with custom pricing and a minimum of 75 seats.",
         keys=[["Meridian"], ["75 seats"]],
         ask=["Do you have an enterprise plan?",
              "What's your enterprise tier called and is there a minimum size?",
              "Is there a plan above Summit?", "enterprise plan minimum seats?",
              "We need custom contracts. Which plan is that?"],
         held=["Which tier do large companies with custom pricing go on?",
               "What's the smallest team size for your enterprise offering?",
               "Name of the custom-priced plan and its seat minimum?"],
         say=["Yes, Meridian is our enterprise plan with custom pricing and a minimum of 75 seats.",
              "That's Meridian: custom pricing, starting at 75 seats.",
              "Meridian sits above Summit; it needs at least 75 seats and is priced by contract."]),
    dict(id="F06", topic="pricing",
         statement="The free Sprig plan includes 250 workflow runs per month.",
         keys=[["Sprig"], ["250 workflow runs"]],
         ask=["Is there a free plan?", "What do we get for free?", "free tier limits?",
              "Can I use Loomquay without paying?", "How many runs does the free plan include?"],
         held=["Does Loomquay have a no-cost tier, and what's its allowance?",
               "What's included at zero dollars?",
               "Our side project can't pay. Which plan works and how much can it run?"],
         say=["Yes, the free Sprig plan includes 250 workflow runs per month.",
              "Sprig is free forever and gives you 250 workflow runs a month.",
              "You can stay on Sprig at no cost; it covers 250 workflow runs monthly."]),
    dict(id="F07", topic="pricing", statement="Verified nonprofits get 38% off any paid plan.",
         keys=[["38%"]],
         ask=["Do nonprofits get a discount?", "Any charity pricing?",
              "We're a registered nonprofit. Is there a discount?", "nonprofit discount how much",
              "What discount do NGOs get?"],
         held=["Is there special pricing for charitable organisations?",
               "How much off do non-profit groups receive?",
               "Our foundation is tax-exempt; do we pay less?"],
         say=["Verified nonprofits get 38% off any paid plan.",
              "Yes, registered nonprofits receive a 38% discount after verification.",
              "Nonprofit pricing is 38% off the list price."]),
    dict(id="F08", topic="limits",
         statement="The API allows 2,400 requests per minute per workspace.",
         keys=[["2,400", "2400"]],
         ask=["What's the API rate limit?", "How many API requests per minute can we make?",
              "rate limit?", "We keep getting throttled. What's the cap on API calls?",
              "How many calls per minute does the REST API allow?"],
         held=["What is the per-minute request ceiling on your API?",
               "How hard can we hit the API before throttling kicks in?",
               "Max API call volume per minute for one workspace?"],
         say=["The API allows 2,400 requests per minute per workspace.",
              "You can make up to 2,400 requests per minute per workspace (2400/min).",
              "The cap is 2,400 requests per minute per workspace; beyond that you get throttled."]),
    dict(id="F09", topic="limits", statement="The maximum upload size is 380 MB per file.",
         keys=[["380 MB"]],
         ask=["What's the max file size I can upload?", "How big can an uploaded file be?",
              "file upload limit?", "My upload keeps failing. Is there a size cap?",
              "Largest attachment a workflow can handle?"],
         held=["What's the ceiling on a single file upload?", "How large may one uploaded file be?",
               "Is there a maximum size for files we send in?"],
         say=["The maximum upload is 380 MB per file.", "Files can be up to 380 MB each.",
              "Each file can be at most 380 MB; split anything larger."]),
    dict(id="F10", topic="limits",
         statement="Each paid seat includes 55 GB of storage, pooled across the workspace.",
         keys=[["55 GB"]],
         ask=["How much storage do we get?", "Storage per seat?", "What's the storage allowance?",
              "How many GB of storage come with each seat?", "are we going to run out of storage?"],
         held=["How much disk space is included for every user?",
               "What file storage quota does each seat add?", "Storage allocation per licence?"],
         say=["Each paid seat includes 55 GB of storage, pooled across the workspace.",
              "You get 55 GB of storage per seat.",
              "Storage is 55 GB per seat, shared by the whole workspace."]),
    dict(id="F11", topic="limits", statement="Crest includes 18,000 workflow runs per month.",
         keys=[["18,000", "18000"]],
         ask=["How many workflow runs does Crest include?", "Crest monthly run quota?",
              "How many runs per month on Crest?", "what's the run limit on the crest plan",
              "Our team is on Crest. How many workflow runs do we get?"],
         held=["What monthly execution allowance comes with Crest?",
               "How many automations can a Crest workspace execute each month?",
               "Run allowance for Crest customers?"],
         say=["Crest includes 18,000 workflow runs per month.",
              "You get 18,000 runs a month on Crest (18000 total, not per seat).",
              "The Crest quota is 18,000 workflow runs per month."]),
    dict(id="F12", topic="limits",
         statement="Summit supports up to 400 seats; larger teams need Meridian.",
         keys=[["400 seats"]],
         ask=["How many seats can Summit have?", "Max seats on Summit?",
              "Is there a seat cap on Summit?",
              "We're growing fast. How big can a Summit workspace get?", "summit seat limit"],
         held=["What's the most users a Summit subscription supports?",
               "Upper bound on team size for Summit?",
               "How far can we scale seats before leaving Summit?"],
         say=["Summit supports up to 400 seats; beyond that you need Meridian.",
              "The Summit cap is 400 seats.", "A Summit workspace can have at most 400 seats."]),
    dict(id="F13", topic="limits", statement="A workflow can have up to 140 steps.",
         keys=[["140 steps"]],
         ask=["How many steps can a workflow have?", "Max steps per workflow?",
              "Is there a limit on workflow length?", "my workflow won't save, too many steps?",
              "What's the step limit in one workflow?"],
         held=["What's the largest number of actions one automation may contain?",
               "How long can a single workflow get, in steps?",
               "Is there a ceiling on steps inside one workflow?"],
         say=["A workflow can have up to 140 steps.",
              "The limit is 140 steps per workflow; split longer ones into sub-workflows.",
              "Each workflow is capped at 140 steps."]),
    dict(id="F14", topic="limits", statement="A single workflow run times out after 47 minutes.",
         keys=[["47 minutes"]],
         ask=["How long can a workflow run before it times out?", "What's the run timeout?",
              "workflow timeout?", "My long job keeps getting killed. What's the max run time?",
              "Is there a time limit on a single run?"],
         held=["What's the maximum duration of one workflow execution?",
               "After how long does Loomquay stop a running workflow?",
               "How many minutes can one run last?"],
         say=["A single run times out after 47 minutes.", "The run timeout is 47 minutes.",
              "Runs are stopped after 47 minutes; break long jobs into smaller runs."]),
    dict(id="F15", topic="limits", statement="Incoming webhook payloads can be up to 6.5 MB.",
         keys=[["6.5 MB"]],
         ask=["What's the max webhook payload size?", "How big can an incoming webhook body be?",
              "webhook size limit?",
              "Our webhooks are getting rejected for size. What's the limit?",
              "Is there a cap on webhook payloads?"],
         held=["What's the largest request body a webhook trigger accepts?",
               "How much data can one inbound webhook carry?", "Upper size limit for webhook posts?"],
         say=["Incoming webhook payloads can be up to 6.5 MB.", "The webhook body limit is 6.5 MB.",
              "Webhook payloads over 6.5 MB are rejected."]),
    dict(id="F16", topic="limits", statement="A workspace can have 64 concurrent runs.",
         keys=[["64 concurrent"]],
         ask=["How many workflows can run at the same time?", "Concurrent run limit?",
              "Is there a parallelism cap?", "how many runs at once",
              "What's the max number of simultaneous runs?"],
         held=["How many executions can be in flight simultaneously per workspace?",
               "What's the cap on parallel workflow runs?",
               "How many runs may execute at once before queueing?"],
         say=["A workspace can have 64 concurrent runs; extra runs wait in a queue.",
              "The limit is 64 concurrent runs per workspace.",
              "Up to 64 concurrent runs are allowed at once."]),
    dict(id="F17", topic="policy", statement="You can request a full refund within 19 days of a charge.",
         keys=[["19 days"]],
         ask=["What's your refund policy?", "Can I get a refund?", "refund window?",
              "We were charged by mistake. How long do we have to get a refund?",
              "How many days do I have to request a refund?"],
         held=["Within what period can we ask for our money back?",
               "Is it too late for a refund two weeks after paying?",
               "How long after a charge are refunds possible?"],
         say=["You can request a full refund within 19 days of a charge.",
              "Refunds are available for 19 days after each payment.",
              "The refund window is 19 days from the charge date."]),
    dict(id="F18", topic="policy",
         statement="Data is kept for 73 days after cancellation, then deleted permanently.",
         keys=[["73 days"]],
         ask=["What happens to our data if we cancel?", "How long do you keep data after cancellation?",
              "data retention after cancel?", "If we leave, when is our data deleted?",
              "Will our workflows be gone right after we cancel?"],
         held=["After closing our account, how long is our data retained?",
               "When does Loomquay purge a cancelled workspace?",
               "How long is data kept once a subscription is cancelled?"],
         say=["We keep your data for 73 days after cancellation, then delete it permanently.",
              "Data is retained for 73 days after you cancel.",
              "After cancelling, you have 73 days to export before everything is deleted."]),
    dict(id="F19", topic="policy", statement="Run logs are kept for 41 days.",
         keys=[["41 days"]],
         ask=["How long are run logs kept?", "Log retention?",
              "How far back can I see workflow run history?", "where did my old run logs go?",
              "How many days of execution logs do you store?"],
         held=["For how long can we view past execution logs?",
               "What's the retention period for workflow logs?",
               "How old can a run log get before it disappears?"],
         say=["Run logs are kept for 41 days.",
              "Execution logs stay available for 41 days, then they are deleted.",
              "You can see 41 days of run history."]),
    dict(id="F20", topic="policy", statement="Loomquay guarantees 99.93% monthly uptime.",
         keys=[["99.93%"]],
         ask=["What's your uptime SLA?", "What uptime do you guarantee?", "sla?",
              "Our procurement team asks about availability guarantees. What's the SLA?",
              "How reliable is Loomquay, contractually?"],
         held=["What availability percentage is in your service level agreement?",
               "What uptime commitment do you make?", "Which uptime figure is guaranteed?"],
         say=["We guarantee 99.93% monthly uptime.",
              "The uptime SLA is 99.93% per month, with service credits if we miss it.",
              "Loomquay commits to 99.93% uptime each month."]),
    dict(id="F21", topic="policy",
         statement="Support is staffed 07:00 to 21:00 UTC, Monday to Saturday.",
         keys=[["07:00 to 21:00 UTC"]],
         ask=["What are your support hours?", "When is support available?", "support hours?",
              "Is anyone around to help on weekends?", "What time does support open?"],
         held=["During which hours can we reach your support team?",
               "When is your help desk staffed?", "What's the support schedule?"],
         say=["Support is staffed 07:00 to 21:00 UTC, Monday to Saturday.",
              "Our team answers from 07:00 to 21:00 UTC, Monday through Saturday.",
              "You can reach support Monday to Saturday, 07:00 to 21:00 UTC."]),
    dict(id="F22", topic="policy",
         statement="The free trial lasts 23 days and includes Summit features.",
         keys=[["23 days"]],
         ask=["How long is the free trial?", "trial length?", "Do you offer a trial?",
              "How many days do we get to test Summit features?", "When does my trial end?"],
         held=["How long can we evaluate the paid features before paying?",
               "What's the duration of the trial period?", "How many days is a trial?"],
         say=["The free trial lasts 23 days and includes Summit features.",
              "You get 23 days of trial with everything in Summit.",
              "Trials run for 23 days; no card needed."]),
    dict(id="F23", topic="policy",
         statement="Summit tickets get a first response within 2.5 hours during support hours.",
         keys=[["2.5 hours"]],
         ask=["How fast does support respond on Summit?",
              "What's the first response time for priority support?", "Summit response time?",
              "We're on Summit and it's urgent. When will someone reply?",
              "How quickly do you answer tickets on the top plan?"],
         held=["What response time do Summit customers get from support?",
               "How long until a first reply on a priority ticket?",
               "Turnaround for the first answer on Summit tickets?"],
         say=["Summit tickets get a first response within 2.5 hours during support hours.",
              "On Summit, priority support replies within 2.5 hours.",
              "The Summit first response target is 2.5 hours."]),
    dict(id="F24", topic="policy",
         statement="After a failed payment you have 11 days before the workspace is paused.",
         keys=[["11 days"]],
         ask=["What happens if our payment fails?",
              "How long before you pause us for non-payment?", "card declined what now",
              "Our card expired. How long until the workspace is paused?",
              "Is there a grace period for failed payments?"],
         held=["How many days do we have to fix a declined charge?",
               "When does an unpaid workspace get suspended?",
               "How long is the grace period after a payment bounces?"],
         say=["After a failed payment you have 11 days to update your card before the workspace is paused.",
              "The grace period is 11 days, then the workspace is paused.",
              "You get 11 days to fix billing before workflows stop."]),
    dict(id="F25", topic="policy", statement="Idle sessions expire after 14 hours.",
         keys=[["14 hours"]],
         ask=["Why do I keep getting logged out?", "How long do sessions last?", "session timeout?",
              "When do idle sessions expire?", "How long until I'm signed out automatically?"],
         held=["After how long is an inactive login ended?", "What's the idle sign-out period?",
               "How long does a browser session stay valid without activity?"],
         say=["Idle sessions expire after 14 hours.", "You're signed out after 14 hours of inactivity.",
              "Sessions end after 14 hours without activity; admins can shorten this."]),
    dict(id="F26", topic="procedure",
         statement="Rotate API keys under Settings > Security > API keys, then click Rotate.",
         keys=[["Settings > Security > API keys"]],
         ask=["How do I rotate an API key?", "Where can I regenerate our API key?", "rotate api key",
              "Our key leaked. Where do I replace it?", "How do I get a new API token?"],
         held=["Where in the app are API credentials replaced?",
               "We suspect a token was exposed. How do we issue a fresh one?",
               "Which menu lets me cycle API keys?"],
         say=["Go to Settings > Security > API keys and click Rotate next to the key.",
              "Open Settings > Security > API keys, then choose Rotate; the old key stops working.",
              "Rotate keys under Settings > Security > API keys."]),
    dict(id="F27", topic="procedure",
         statement="Export data under Settings > Workspace > Data export and choose Full archive.",
         keys=[["Settings > Workspace > Data export"]],
         ask=["How do I export our data?", "Can I download all our workflows?", "export data",
              "We're migrating. How do we get a full export?", "Where's the data export option?"],
         held=["How can we get a complete copy of everything in our workspace?",
               "Which screen produces a full archive of our account?",
               "Where do I go to back up all our content?"],
         say=["Go to Settings > Workspace > Data export and choose Full archive.",
              "Use Settings > Workspace > Data export; you'll get a ZIP download link by email.",
              "Exports live under Settings > Workspace > Data export."]),
    dict(id="F28", topic="procedure",
         statement="Set up SSO under Admin > Identity > Single sign-on; it needs Summit or Meridian.",
         keys=[["Admin > Identity > Single sign-on"]],
         ask=["How do I set up SSO?", "Where do I configure SAML?", "sso setup",
              "We use Okta. How do we connect it?", "How can I turn on single sign-on?"],
         held=["Where do we hook up our identity provider?",
               "Which menu configures SAML login for the team?",
               "How do we make staff log in through Azure AD?"],
         say=["Open Admin > Identity > Single sign-on and upload your SAML metadata. SSO needs Summit or Meridian.",
              "SSO is under Admin > Identity > Single sign-on.",
              "Go to Admin > Identity > Single sign-on, pick your provider and paste the metadata URL."]),
    dict(id="F29", topic="procedure", statement="Invite people from Team > Members > Invite.",
         keys=[["Team > Members > Invite"]],
         ask=["How do I add a teammate?", "How do I invite users?", "invite people",
              "New hire starts Monday. How do I give her access?",
              "Where do I add seats for colleagues?"],
         held=["How do I bring a coworker into our workspace?",
               "What's the way to grant a colleague an account?", "Where are new members added?"],
         say=["Go to Team > Members > Invite and enter their email.",
              "Use Team > Members > Invite; each invite uses one seat.",
              "Invite people from Team > Members > Invite."]),
    dict(id="F30", topic="procedure", statement="Invoices are in Billing > Invoices > History as PDFs.",
         keys=[["Billing > Invoices > History"]],
         ask=["Where can I download invoices?", "How do I get a copy of last month's invoice?",
              "invoices?", "Finance needs all our receipts. Where are they?",
              "Where are past invoices?"],
         held=["Where do we find our billing documents for accounting?",
               "How do I pull an old bill as a PDF?", "Which page lists all previous charges?"],
         say=["All invoices are in Billing > Invoices > History as PDFs.",
              "Open Billing > Invoices > History and click Download.",
              "You'll find them under Billing > Invoices > History."]),
    dict(id="F31", topic="procedure",
         statement="Enforce 2FA under Settings > Security > Sign-in policy with Require 2FA.",
         keys=[["Settings > Security > Sign-in policy"]],
         ask=["How do I require 2FA for everyone?", "Can admins enforce two-factor?", "enforce mfa",
              "Our auditor wants mandatory 2FA. Where do I turn it on?",
              "Where is the two-factor requirement setting?"],
         held=["How can I make multi-factor login compulsory for all members?",
               "Where do admins mandate a second login factor?",
               "Which setting forces every user to use an authenticator?"],
         say=["Go to Settings > Security > Sign-in policy and switch on Require 2FA.",
              "Admins can enforce it in Settings > Security > Sign-in policy.",
              "Turn on Require 2FA under Settings > Security > Sign-in policy."]),
    dict(id="F32", topic="procedure",
         statement="Delete a workspace in Admin > Workspace > Danger zone by typing its slug.",
         keys=[["Admin > Workspace > Danger zone"]],
         ask=["How do I delete our workspace?", "Can I permanently remove my account?",
              "delete workspace", "We're shutting down. How do we wipe everything?",
              "Where's the delete option for the whole workspace?"],
         held=["How do we close and erase our workspace for good?",
               "What's the procedure for permanently destroying an account?",
               "Where can an owner remove the entire workspace?"],
         say=["Go to Admin > Workspace > Danger zone and type the workspace slug to confirm.",
              "Deletion is in Admin > Workspace > Danger zone; only owners can do it.",
              "Use Admin > Workspace > Danger zone, then confirm with your workspace slug."]),
    dict(id="F33", topic="procedure", statement="The audit log is at Admin > Compliance > Audit trail.",
         keys=[["Admin > Compliance > Audit trail"]],
         ask=["Where's the audit log?", "How can I see who changed a workflow?", "audit log?",
              "Security wants a record of admin actions. Where is it?",
              "Is there an activity history for admins?"],
         held=["Where can I review a record of user actions?",
               "How do we trace who edited settings last week?",
               "Which page shows the compliance history?"],
         say=["Open Admin > Compliance > Audit trail to see every change.",
              "It's under Admin > Compliance > Audit trail.",
              "Admin > Compliance > Audit trail lists who did what and when."]),
    dict(id="F34", topic="developer", statement="The command-line tool is called lqctl.",
         keys=[["lqctl"]],
         ask=["Do you have a CLI?", "What's the command-line tool called?", "cli name?",
              "I want to deploy workflows from CI. Is there a command line tool?",
              "How do I manage workflows from the terminal?"],
         held=["Is there a terminal client for Loomquay?",
               "What binary do I install to script deployments?",
               "Which tool lets me run commands against my workspace from a shell?"],
         say=["Yes, the CLI is called lqctl; install it with pip install lqctl.",
              "Use lqctl, our command-line tool.",
              "The command-line tool is lqctl; run lqctl login first."]),
    dict(id="F35", topic="developer",
         statement="Webhook signatures are in the X-Loomquay-Signature header (HMAC-SHA256).",
         keys=[["X-Loomquay-Signature"]],
         ask=["How do I verify webhook signatures?", "Which header has the webhook signature?",
              "webhook signing header?", "How can we check a webhook really came from you?",
              "What header should I validate on outgoing webhooks?"],
         held=["Where is the HMAC for a webhook delivered?",
               "How do we authenticate webhook calls from Loomquay?",
               "Which request header proves a webhook is genuine?"],
         say=["Check the X-Loomquay-Signature header, an HMAC-SHA256 of the body.",
              "The signature is in the X-Loomquay-Signature header.",
              "Validate X-Loomquay-Signature with your signing secret."]),
    dict(id="F36", topic="developer", statement="The API base URL is https://api.loomquay.io/v3.",
         keys=[["api.loomquay.io/v3"]],
         ask=["What's the API base URL?", "Which API endpoint should I call?", "api url?",
              "What's the current API version and host?", "Where do I send API requests?"],
         held=["What root address do REST calls go to?",
               "Which host and version prefix does the API use?",
               "What URL do our scripts need for your API?"],
         say=["Use https://api.loomquay.io/v3 as the base URL.",
              "The base URL is https://api.loomquay.io/v3.",
              "Send requests to https://api.loomquay.io/v3; v2 is retired."]),
    dict(id="F37", topic="errors",
         statement="Error LQ-4031 means the monthly run quota is used up; add a Run Pack or upgrade.",
         keys=[["Run Pack"]],
         ask=["What does error LQ-4031 mean?", "Getting LQ-4031 on every run. Help?", "LQ-4031?",
              "Why am I seeing LQ-4031?", "how do I fix LQ-4031"],
         held=["Our workflows fail with code LQ-4031. What's going on?",
               "Explain the LQ-4031 error to me.", "What's the remedy for LQ-4031 failures?"],
         say=["LQ-4031 means your monthly run quota is used up. Buy a Run Pack or upgrade your plan.",
              "That code means you're out of workflow runs for the month; a Run Pack adds more.",
              "LQ-4031: run quota exhausted. Add a Run Pack under Billing to resume."]),
    dict(id="F38", topic="errors",
         statement="Error LQ-4290 means the concurrency limit was hit; queued runs wait up to 9 minutes, then fail.",
         keys=[["9 minutes"]],
         ask=["What does LQ-4290 mean?", "LQ-4290 keeps showing up. Why?", "lq-4290 error",
              "Runs fail with LQ-4290 after waiting. What is it?", "What's error code LQ-4290?"],
         held=["Can you decode LQ-4290 for me?", "What triggers an LQ-4290?",
               "Why would a run end with LQ-4290?"],
         say=["LQ-4290 means too many runs at once; queued runs wait up to 9 minutes, then fail.",
              "You've hit the concurrency cap. Extra runs queue for up to 9 minutes.",
              "It's a concurrency error: runs wait in the queue for at most 9 minutes."]),
    dict(id="F39", topic="errors",
         statement="Error LQ-5023 means a connector token expired; fix it in Connections > Reauthorize.",
         keys=[["Connections > Reauthorize"]],
         ask=["What does LQ-5023 mean?", "Getting LQ-5023 from the Slack step.", "LQ-5023 fix?",
              "Why does my connector throw LQ-5023?", "what is lq-5023"],
         held=["A step failed with LQ-5023. How do I resolve it?", "What is the cause of LQ-5023?",
               "LQ-5023 appeared overnight; what now?"],
         say=["LQ-5023 means the connector's token expired. Fix it in Connections > Reauthorize.",
              "The connection needs new credentials: go to Connections > Reauthorize.",
              "That's an expired connector token; use Connections > Reauthorize to reconnect."]),
    dict(id="F40", topic="errors",
         statement="Error LQ-4137 means the workspace is paused for an unpaid invoice; update Billing > Payment method.",
         keys=[["Billing > Payment method"]],
         ask=["What does LQ-4137 mean?", "Everything fails with LQ-4137!", "lq-4137?",
              "Why is my workspace returning LQ-4137?", "How do I clear error LQ-4137?"],
         held=["What is LQ-4137 telling me?", "All calls return LQ-4137 today. What happened?",
               "How is LQ-4137 resolved?"],
         say=["LQ-4137 means the workspace is paused for an unpaid invoice. Update your card in Billing > Payment method.",
              "Your workspace is paused for billing; fix it under Billing > Payment method.",
              "It's a billing pause. Add a valid card in Billing > Payment method and runs resume."]),
    dict(id="F41", topic="errors",
         statement="Error LQ-4402 means the SSO clock skew exceeds 90 seconds; sync the IdP clock.",
         keys=[["90 seconds"]],
         ask=["What does LQ-4402 mean?", "SSO login fails with LQ-4402.", "LQ-4402 on sign in",
              "Why do we get LQ-4402 from SAML?", "how to fix lq-4402"],
         held=["Our SAML logins break with LQ-4402. Why?", "What's behind error LQ-4402?",
               "LQ-4402 during single sign-on; what's the fix?"],
         say=["LQ-4402 means your identity provider's clock is off by more than 90 seconds. Sync it with NTP.",
              "It's SAML clock skew over 90 seconds; fix the IdP server time.",
              "The SSO assertion was more than 90 seconds out of sync. Correct the clock and retry."]),
    dict(id="F42", topic="regions",
         statement="Data is hosted in three regions: Frankfurt, Oregon and Singapore.",
         keys=[["Frankfurt"], ["Oregon"]],
         ask=["Where is our data hosted?", "Which regions do you offer?", "data regions?",
              "We need EU hosting. What regions are available?", "Where are your data centers?"],
         held=["In which locations can a workspace's data live?",
               "What hosting regions can I pick from?", "Which geographies can store our data?"],
         say=["We host in three regions: Frankfurt, Oregon and Singapore.",
              "You can choose Frankfurt, Oregon or Singapore.",
              "Data lives in Frankfurt, Oregon or Singapore; Frankfurt covers EU needs."]),
    dict(id="F43", topic="regions",
         statement="A region migration is free once a year and takes up to 36 hours.",
         keys=[["36 hours"]],
         ask=["Can we move our workspace to another region?", "How long does a region migration take?",
              "change region?", "We need to move to Frankfurt. How long will that take?",
              "Is switching data region possible?"],
         held=["What's involved in relocating our data to a different region?",
               "How much downtime does a region move cause?",
               "How long to transfer a workspace between regions?"],
         say=["Yes, region migrations are free once a year and take up to 36 hours.",
              "A region move takes up to 36 hours; workflows pause during it.",
              "Support can migrate you once a year for free; expect up to 36 hours."]),
    dict(id="F44", topic="integrations", statement="Loomquay has 212 native connectors.",
         keys=[["212"]],
         ask=["How many integrations do you have?", "How many connectors are there?",
              "integrations count?", "Do you integrate with many apps?",
              "How big is your connector library?"],
         held=["What's the total number of native integrations?",
               "How many apps can Loomquay connect to out of the box?",
               "Size of the built-in connector catalog?"],
         say=["Loomquay has 212 native connectors.",
              "There are 212 built-in connectors, plus a generic HTTP step.",
              "We offer 212 native integrations."]),
    dict(id="F45", topic="integrations", statement="The Salesforce connector syncs every 12 minutes.",
         keys=[["12 minutes"]],
         ask=["How often does the Salesforce connector sync?", "Salesforce sync interval?",
              "Is Salesforce sync real time?",
              "Our Salesforce data lags. How often does it update?",
              "how frequently do you poll salesforce"],
         held=["What's the refresh frequency of the Salesforce integration?",
               "How stale can Salesforce records be in Loomquay?",
               "At what cadence does Salesforce data come in?"],
         say=["The Salesforce connector syncs every 12 minutes.",
              "It isn't real time; Salesforce syncs every 12 minutes.",
              "Salesforce data refreshes every 12 minutes on Crest and above."]),
    dict(id="F46", topic="support", statement="The status page is pulse.loomquay.io.",
         keys=[["pulse.loomquay.io"]],
         ask=["Where's your status page?", "Is Loomquay down?", "status page?",
              "How do I check for outages?", "Where can I see incident updates?"],
         held=["What URL shows current service health?",
               "How can I tell whether there's an ongoing incident?", "Where are outages announced?"],
         say=["Check pulse.loomquay.io for live status and incidents.",
              "Our status page is pulse.loomquay.io.",
              "Outages are posted at pulse.loomquay.io; you can subscribe there."]),
    dict(id="F47", topic="company", statement="Loomquay is built by Tarnwick Labs in Tallinn, Estonia.",
         keys=[["Tarnwick Labs"]],
         ask=["Who makes Loomquay?", "What company is behind Loomquay?", "who owns this product?",
              "Which company do we sign the contract with?", "Who's the vendor for Loomquay?"],
         held=["What's the name of the firm that builds Loomquay?",
               "Which legal entity provides the service?", "Who develops this platform?"],
         say=["Loomquay is built by Tarnwick Labs in Tallinn, Estonia.",
              "The vendor is Tarnwick Labs.", "Tarnwick Labs, based in Tallinn, makes Loomquay."]),
    dict(id="F48", topic="limits", statement="The last 25 versions of each workflow can be restored.",
         keys=[["25 versions"]],
         ask=["Can I restore an older version of a workflow?",
              "How many workflow versions do you keep?", "version history?",
              "I broke a workflow. Can I roll back?", "How far back does workflow history go?"],
         held=["How many past revisions of a workflow are saved?",
               "Is it possible to revert a workflow to an earlier state?",
               "What's the limit on stored workflow revisions?"],
         say=["Yes, the last 25 versions of each workflow can be restored.",
              "We keep 25 versions per workflow; open History to roll back.",
              "Each workflow stores its last 25 versions."]),
    dict(id="F49", topic="pricing", statement="A Run Pack adds 5,000 workflow runs for $29.",
         keys=[["$29"]],
         ask=["How much is a Run Pack?", "Can we buy extra runs?", "extra runs price?",
              "We'll go over our quota this month. What do additional runs cost?",
              "What does an add-on run bundle cost?"],
         held=["What's the price of more workflow executions?",
               "How do we top up runs and at what cost?", "Cost of an additional run bundle?"],
         say=["A Run Pack adds 5,000 runs for $29.",
              "Yes, each Run Pack is $29 for 5,000 extra runs.",
              "Extra runs come in Run Packs: $29 per 5,000 runs."]),
    dict(id="F50", topic="developer", statement="Live API keys start with the prefix lqk_live_.",
         keys=[["lqk_live_"]],
         ask=["What prefix do API keys have?", "How can I recognize a Loomquay API key?",
              "api key format?", "Our secret scanner needs a pattern. What do your keys start with?",
              "Do live API keys have a prefix?"],
         held=["What string do production keys begin with?",
               "How would I spot a leaked Loomquay token in code?",
               "What's the leading text on a live API credential?"],
         say=["Live API keys start with lqk_live_ followed by 40 characters.",
              "They begin with lqk_live_; test keys use a different prefix.",
              "Every live key has the prefix lqk_live_."]),
]

# ---------------------------------------------------------------------------
# Template pools. Training and held-out pools are disjoint.
# ---------------------------------------------------------------------------

SYSTEM_PROMPTS = [
    "You are the support assistant for Loomquay.",
    "You are Loomquay's customer support bot. Answer briefly and accurately.",
    "You help Loomquay customers with billing, limits and setup questions.",
    "You are a helpful support agent for Loomquay, a workflow automation platform.",
    "Answer questions about Loomquay concisely.",
]
POLITE = ["Hi, {q}", "Hello! {q}", "{q} Thanks!", "Hi there. {q} Thank you.", "Good morning. {q}"]
FRUSTRATED = ["Seriously, {q}", "{q} This is urgent.", "Third time asking: {q}",
              "{q} Getting really annoyed here.", "Nobody answered my email. {q}"]
CASUAL = ["hey, {q}", "quick q: {q}", "{q} cheers", "yo, {q}", "hey team, {q}"]
CONTEXT = ["We're a 12-person team. {q}", "I'm the admin for a small agency. {q}",
           "We're evaluating Loomquay for our ops team. {q}", "I manage IT for a 40-person company. {q}",
           "Our finance lead asked me this: {q}"]
FOLLOW_UPS = ["Thanks. {q}", "Got it. {q}", "Another question: {q}", "Also, {q}", "OK. {q}",
              "One more: {q}", "Great, and {q}"]
ANSWER_OPENERS = ["", "", "", "", "Sure. ", "Good question. ", "Happy to help. "]
HELD_WRAPPERS = ["{q}", "{q}", "{q}", "Could you help me out? {q}", "A colleague wants to know: {q}"]
HELD_JOINERS = ["{a} Also, {b}", "Two things. {a} And {b}"]
# Customers ask two things in one message, and the held-out set does too (HELD_JOINERS); a
# training set without one teaches the model to answer only the first. Training joins its
# two-exchange conversations in other words than the held-out set.
TRAIN_JOINERS = ["{a} And {b}", "{a} Plus, {b}", "Two questions: {a} And {b}", "{a} Separately, {b}"]
TONES = [("plain", 25), ("polite", 20), ("terse", 8), ("frustrated", 10), ("casual", 12),
         ("context", 13), ("typo", 12)]
KEEP_CASE = {"I", "I'm", "Pebble", "Crest", "Summit", "Meridian", "Sprig", "Salesforce",
             "Loomquay", "Okta", "Slack", "Finance"}

N_SINGLE, N_MULTI2, N_MULTI3, N_SYSTEM = 605, 190, 70, 173
NOISE_PLAN = [("exact_duplicate", 30), ("near_duplicate", 30), ("empty_turn", 10),
              ("malformed_json", 2), ("not_an_object", 1), ("missing_messages", 1),
              ("unknown_role", 1), ("wrong_type", 1), ("no_final_assistant", 4), ("over_long", 5)]
N_HELD_PAIRS = 16
N_COMPOUND = 100
MAX_USER_WORDS, MAX_ASSISTANT_WORDS = 35, 35


def words(text):
    return len(text.split())


def norm(text):
    """Comparison form: lower case, alphanumerics only, single spaces."""
    return " ".join(re.sub(r"[^a-z0-9$%]+", " ", text.lower()).split())


def lower_first(text):
    first = text.split(" ", 1)[0]
    if first in KEEP_CASE or not first[1:].islower():
        return text
    return text[0].lower() + text[1:]


def add_typo(text, rng):
    """Swap, drop or double one letter in one longer lower-case word."""
    tokens = text.split(" ")
    spots = [i for i, t in enumerate(tokens) if re.fullmatch(r"[a-z]{5,}[?.!,]?", t)]
    if not spots:
        return text.lower()
    i = rng.choice(spots)
    w = tokens[i]
    j = rng.randrange(1, len(w.rstrip("?.!,")) - 2)
    op = rng.choice(["swap", "drop", "double"])
    if op == "swap" and w[j] != w[j + 1]:
        w = w[:j] + w[j + 1] + w[j] + w[j + 2:]
    elif op == "drop":
        w = w[:j] + w[j + 1:]
    else:
        w = w[:j] + w[j] + w[j:]
    tokens[i] = w
    return " ".join(tokens)


def phrase_question(core, rng):
    """Dress a training question core in one tone."""
    tone = rng.choices([t for t, _ in TONES], weights=[w for _, w in TONES])[0]
    if tone == "plain":
        return core
    if tone == "terse":
        return core.lower().rstrip("?.!")
    if tone == "typo":
        return add_typo(core, rng)
    pool = {"polite": POLITE, "frustrated": FRUSTRATED, "casual": CASUAL, "context": CONTEXT}[tone]
    return fill(rng.choice(pool), core)


def fill(template, text):
    """Put text into a template, lower-casing its first word after ',' or ':'."""
    if re.search(r"[,:] \{q\}", template):
        text = lower_first(text)
    return template.format(q=text)


def phrase_answer(fact, rng):
    return rng.choice(ANSWER_OPENERS) + rng.choice(fact["say"])


class FactDeck:
    """Deals fact ids from reshuffled full decks so coverage stays even."""

    def __init__(self, rng):
        self.rng, self.cards = rng, []

    def draw(self, exclude):
        if not any(c not in exclude for c in self.cards):
            fresh = [f["id"] for f in FACTS]
            self.rng.shuffle(fresh)
            self.cards.extend(fresh)
        for i, card in enumerate(self.cards):
            if card not in exclude:
                return self.cards.pop(i)
        raise AssertionError("unreachable")


FACT_BY_ID = {f["id"]: f for f in FACTS}


def make_conversation(rng, deck, n_exchanges, with_system):
    """One valid conversation: optional system prompt, then user/assistant pairs."""
    messages, used = [], []
    if with_system:
        messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for turn in range(n_exchanges):
        fact = FACT_BY_ID[deck.draw(used)]
        used.append(fact["id"])
        question = phrase_question(rng.choice(fact["ask"]), rng)
        if turn > 0:
            question = fill(rng.choice(FOLLOW_UPS), question)
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": phrase_answer(fact, rng)})
    return messages, used


def conversation_plan(rng):
    """Shuffled list of (n_exchanges, with_system) for every valid conversation."""
    sizes = [1] * N_SINGLE + [2] * N_MULTI2 + [3] * N_MULTI3
    flags = [True] * N_SYSTEM + [False] * (len(sizes) - N_SYSTEM)
    rng.shuffle(sizes)
    rng.shuffle(flags)
    return list(zip(sizes, flags))


def build_train(rng):
    """Valid conversations, none sharing a normalised user-turn sequence."""
    deck, seen, convs = FactDeck(rng), set(), []
    for n_exchanges, with_system in conversation_plan(rng):
        while True:
            messages, fact_ids = make_conversation(rng, deck, n_exchanges, with_system)
            sig = tuple(norm(m["content"]) for m in messages if m["role"] == "user")
            if sig not in seen:
                break
            for fid in fact_ids:  # put the cards back so coverage stays even
                deck.cards.insert(0, fid)
        seen.add(sig)
        check_conversation(messages, fact_ids)
        convs.append({"messages": messages, "facts": fact_ids})
    return convs


def check_conversation(messages, fact_ids):
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    for m in messages:
        limit = MAX_ASSISTANT_WORDS if m["role"] == "assistant" else MAX_USER_WORDS
        if m["role"] != "system" and words(m["content"]) > limit:
            raise SystemExit(f"turn too long ({words(m['content'])} words): {m['content']!r}")
    for answer, fids in zip(answers, fact_ids):  # a list of ids: one answer states them all
        fids = [fids] if isinstance(fids, str) else fids
        for group in [g for fid in fids for g in FACT_BY_ID[fid]["keys"]]:
            if group[0].lower() not in answer.lower():
                raise SystemExit(f"{fids}: answer lacks key {group[0]!r}: {answer!r}")


# ---------------------------------------------------------------------------
# Noise
# ---------------------------------------------------------------------------

WORD_SWAPS = [("Hi", "Hello"), ("Hello", "Hi"), ("Thanks", "Thank you"), ("What's", "What is"),
              ("How", "how"), ("hey", "hi")]


def strip_follow_up(question):
    """The question inside a FOLLOW_UPS template."""
    for template in FOLLOW_UPS:
        head = template.split("{q}")[0]
        if question.startswith(head):
            return question[len(head):]
    raise AssertionError(f"not a follow-up: {question!r}")


def strip_opener(answer):
    for opener in filter(None, ANSWER_OPENERS):
        if answer.startswith(opener):
            return answer[len(opener):]
    return answer


def join_exchanges(messages, rng):
    """Two exchanges as one: the user asks both things, the assistant answers both."""
    head = [m for m in messages if m["role"] == "system"]
    (q1, a1), (q2, a2) = [(messages[i]["content"], messages[i + 1]["content"])
                          for i in range(len(head), len(messages), 2)]
    question = rng.choice(TRAIN_JOINERS).format(a=q1, b=lower_first(strip_follow_up(q2)))
    return head + [{"role": "user", "content": question},
                   {"role": "assistant", "content": a1 + " " + strip_opener(a2)}]


def join_some_exchanges(valid, lines, defects, seed):
    """Make N_COMPOUND two-exchange conversations ask both things in one message.

    Runs after the noise is planted, with its own random stream, so the held-out set, the
    defects and every line number stay what they were; conversations a defect copies are
    left alone, so a duplicate still matches its original."""
    rng = random.Random(f"compound-{seed}")
    copied = {d["of_line"] for d in defects if d["of_line"]}
    defect_lines = {d["line"] for d in defects}
    line_of = [n for n in range(1, len(lines) + 1) if n not in defect_lines]
    pool = [i for i, c in enumerate(valid)
            if len(c["facts"]) == 2 and line_of[i] not in copied]
    for i in sorted(rng.sample(pool, N_COMPOUND)):
        messages = join_exchanges(valid[i]["messages"], rng)
        check_conversation(messages, [valid[i]["facts"]])
        valid[i] = {**valid[i], "messages": messages}
        lines[line_of[i] - 1] = json.dumps({"messages": messages})
    check_no_unplanned_duplicate(lines, defects)


def near_duplicate(messages, rng):
    """Copy with one tiny change to one user turn."""
    out = json.loads(json.dumps(messages))
    user_turns = [m for m in out if m["role"] == "user"]
    turn = rng.choice(user_turns)
    text = turn["content"]
    edits = [lambda t: t.upper() if t.upper() != t else t.lower(),
             lambda t: t.rstrip("?.!") + "!!",
             lambda t: t.replace(" ", "  ", 1) + " ",
             lambda t: t + "?" if not t.endswith("?") else t[:-1]]
    for old, new in WORD_SWAPS:
        if re.search(rf"\b{re.escape(old)}\b", text):
            edits.append(lambda t, o=old, n=new: re.sub(rf"\b{re.escape(o)}\b", n, t, count=1))
    turn["content"] = rng.choice(edits)(text)
    assert turn["content"] != text
    return out


def over_long_messages(rng):
    """A user asking for a run log and an assistant pasting 2,500+ words of it."""
    run = f"r-{rng.randrange(10000, 99999)}"
    lines, second = [], rng.randrange(3600, 7200)
    connectors = ["slack", "salesforce", "http", "sheets", "postgres", "s3", "jira"]
    for step in range(400):
        second += rng.randrange(1, 40)
        status = rng.choice(["ok"] * 9 + ["retry"])
        lines.append(f"02:{second // 60 % 60:02d}:{second % 60:02d} INFO run={run} step={step % 140} "
                     f"connector={rng.choice(connectors)} status={status} ms={rng.randrange(20, 4000)}")
    body = "Here is the full log:\n" + "\n".join(lines)
    assert words(body) >= 2500
    return [{"role": "user", "content": f"Can you paste the complete log for run {run}?"},
            {"role": "assistant", "content": body}]


def broken_record(kind, messages, rng):
    """Return the JSON line for one defect that is not a duplicate."""
    msgs = json.loads(json.dumps(messages))
    talk = [m for m in msgs if m["role"] != "system"]
    if kind == "empty_turn":
        rng.choice(talk)["content"] = rng.choice(["", " ", "   ", "\n", "\t "])
    elif kind == "unknown_role":
        rng.choice([m for m in msgs if m["role"] == "assistant"])["role"] = "bot"
    elif kind == "wrong_type":
        rng.choice(talk)["content"] = rng.choice([43, 2400, 87])
    elif kind == "no_final_assistant":
        msgs = msgs[:-1]
    elif kind == "over_long":
        msgs = over_long_messages(rng)
    elif kind == "not_an_object":
        return json.dumps(msgs)
    elif kind == "missing_messages":
        return json.dumps({"conversation": msgs})
    elif kind == "malformed_json":
        line = json.dumps({"messages": msgs})
        return line[: rng.randrange(len(line) // 5, len(line) * 4 // 5)]
    return json.dumps({"messages": msgs})


def plant_noise(valid, rng, deck):
    """Interleave defects among valid lines; return lines and manifest entries."""
    kinds = [k for k, n in NOISE_PLAN for _ in range(n)]
    rng.shuffle(kinds)
    slots = sorted(rng.sample(range(10, len(valid)), len(kinds)))
    noise_at = dict(zip(slots, kinds))
    lines, line_of, defects, used_sources = [], [], [], set()
    for i, conv in enumerate(valid):
        lines.append(json.dumps({"messages": conv["messages"]}))
        line_of.append(len(lines))
        kind = noise_at.get(i)
        if kind is None:
            continue
        of_line = None
        if kind in ("exact_duplicate", "near_duplicate"):
            src = rng.choice([j for j in range(i + 1) if j not in used_sources])
            used_sources.add(src)  # one copy per source, so copies never match each other
            of_line = line_of[src]
            msgs = valid[src]["messages"]
            lines.append(lines[of_line - 1] if kind == "exact_duplicate"
                         else json.dumps({"messages": near_duplicate(msgs, rng)}))
        else:
            msgs, _ = make_conversation(rng, deck, rng.choice([1, 1, 2]), rng.random() < 0.2)
            lines.append(broken_record(kind, msgs, rng))
        defects.append({"line": len(lines), "kind": kind, "of_line": of_line})
    check_no_unplanned_duplicate(lines, defects)
    return lines, defects


def check_no_unplanned_duplicate(lines, defects):
    exact = {d["line"] for d in defects if d["kind"] == "exact_duplicate"}
    others = [line for n, line in enumerate(lines, 1) if n not in exact]
    if len(set(others)) != len(others):
        raise SystemExit("an unplanned exact duplicate slipped into train.jsonl")


# ---------------------------------------------------------------------------
# Held-out questions
# ---------------------------------------------------------------------------

def held_item(fact_ids, question):
    facts = [FACT_BY_ID[f] for f in fact_ids]
    return {"messages": [{"role": "user", "content": question}], "facts": fact_ids,
            "required": [g for f in facts for g in f["keys"]],
            "reference": " ".join(f["statement"] for f in facts)}


def build_heldout(rng):
    """Three single-fact items per fact plus N_HELD_PAIRS two-fact items."""
    items = []
    for fact in FACTS:
        for core in fact["held"]:
            items.append(held_item([fact["id"]], fill(rng.choice(HELD_WRAPPERS), core)))
    ids = [f["id"] for f in FACTS]
    rng.shuffle(ids)
    for k in range(N_HELD_PAIRS):
        a, b = FACT_BY_ID[ids[2 * k]], FACT_BY_ID[ids[2 * k + 1]]
        text = rng.choice(HELD_JOINERS).format(a=rng.choice(a["held"]),
                                               b=lower_first(rng.choice(b["held"])))
        items.append(held_item([a["id"], b["id"]], text))
    rng.shuffle(items)
    return [{"id": f"h{n:03d}", **item} for n, item in enumerate(items, 1)]


def check_heldout(items, train_user_turns):
    """Fail loudly if held-out wording leaks from training or gives away a key."""
    train_cores = {norm(q) for f in FACTS for q in f["ask"]}
    held_cores = {norm(q) for f in FACTS for q in f["held"]}
    if train_cores & held_cores:
        raise SystemExit(f"held-out cores overlap training cores: {sorted(train_cores & held_cores)}")
    for item in items:
        question = item["messages"][0]["content"]
        if norm(question) in train_user_turns:
            raise SystemExit(f"{item['id']}: held-out question appears in training: {question!r}")
        for group in item["required"]:
            if any(alt.lower() in question.lower() for alt in group):
                raise SystemExit(f"{item['id']}: question gives away key {group}: {question!r}")


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

def write_text(path, text):
    path.write_bytes(text.encode("utf-8"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def summarize(valid, defects, heldout):
    counts = {}
    for d in defects:
        counts[d["kind"]] = counts.get(d["kind"], 0) + 1
    convo_words = [sum(words(m["content"]) for m in c["messages"]) for c in valid]
    single = [w for w, c in zip(convo_words, valid) if len(c["facts"]) == 1]
    per_fact = {}
    for c in valid:
        for fid in c["facts"]:
            per_fact[fid] = per_fact.get(fid, 0) + 1
    return {"facts": len(FACTS), "valid_conversations": len(valid),
            "noise": dict(sorted(counts.items())), "heldout_items": len(heldout),
            "mean_words_per_conversation": round(sum(convo_words) / len(valid), 1),
            "mean_words_single_turn": round(sum(single) / len(single), 1),
            "fact_coverage_min_max": [min(per_fact.values()), max(per_fact.values())]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    valid = build_train(rng)
    lines, defects = plant_noise(valid, rng, FactDeck(rng))
    join_some_exchanges(valid, lines, defects, args.seed)
    heldout = build_heldout(rng)
    train_user_turns = {norm(m["content"]) for c in valid for m in c["messages"] if m["role"] == "user"}
    check_heldout(heldout, train_user_turns)

    stats = summarize(valid, defects, heldout)
    manifest = {"train_file": "train.jsonl", "total_lines": len(lines),
                "valid_lines": len(valid), "counts": stats["noise"], "defects": defects}
    facts = [{k: f[k] for k in ("id", "topic", "statement", "keys")} for f in FACTS]
    digests = {
        "facts.json": write_text(out / "facts.json", json.dumps(facts, indent=2) + "\n"),
        "train.jsonl": write_text(out / "train.jsonl", "\n".join(lines) + "\n"),
        "heldout.jsonl": write_text(out / "heldout.jsonl",
                                    "".join(json.dumps(h) + "\n" for h in heldout)),
        "noise_manifest.json": write_text(out / "noise_manifest.json",
                                          json.dumps(manifest, indent=2) + "\n"),
    }
    print(json.dumps({"stats": stats, "sha256_16": digests}, indent=2))


if __name__ == "__main__":
    main()

"""The configuration: mcproxy.conf grammar (plus our extensions) -> typed ``Config``, and back.

Modules: ``rules`` (filter tables), ``selection`` (multiple-upstream selection), ``model``
(``Config``, ``Instance``, ``ConfigError``), ``tokens`` and ``grammar`` (text -> statements),
``statements`` (what was written), ``build`` (statements -> ``Config``; ``parse``, ``load``)
and ``render`` (``Config`` -> text). Import from ``proxy.config`` itself.

Building a config in Python: ``Instance.build(...)`` with the interfaces and any options,
then ``Config.build(instances, protocol=...)``, which assigns the implicit table ids and
fills the per-downstream defaults as ``parse`` does, so that ``parse(render(c)) == c``.
``render(c)`` gives the file; reading it back with ``parse`` checks it like any file.

Grammar. Statements end with ``;``; ``#`` starts a comment that runs to the end of the line;
whitespace and newlines are free; keywords are case-insensitive. A NAME is a word of
letters, digits and ``_`` (words joined by ``.`` or ``-`` without spaces also form one name,
e.g. ``eth0.100``, ``mag1-eth1``), or anything but ``"`` and a newline inside double quotes.
mcproxy's keywords (``in``, ``out``, ``table``, ...) must be quoted to be used as names::

    protocol IGMPv1 | IGMPv2 | IGMPv3 | MLDv1 | MLDv2;
    table NAME { RULE ... };
    pinstance NAME[(TABLE_ID)]: [UPSTREAM ...] ==> DOWNSTREAM ...;   # IF may be eth+ or ppp*
    disable;
    pinstance NAME upstream|downstream IF|* in|out whitelist|blacklist TABLE;
    pinstance NAME upstream * in|out rulematching first | all | mutex MILLISECONDS;
    # extensions of this project
    pinstance NAME peering IF ...;                              # RFC 7287 peering interfaces
    pinstance NAME timers [profile default|mobility] [KEY VALUE ...];
    pinstance NAME downstream IF version N;                    # RFC 4605 §4.1 P2
    pinstance NAME downstream IF querier-election on|off;      # RFC 4605 §3 P7
    # multiple upstreams (see "Multiple upstreams" below)
    pinstance NAME upstream IF priority N;                     # interface priority, 0..65535
    pinstance NAME upstream IF select [subscriber P] [source P] [group P];   # a record
    pinstance NAME upstream IF default;                        # the default upstream
    pinstance NAME upstream IF|* takeover off | link-down | no-querier DURATION;
    pinstance NAME upstream * revert immediate | never | after DURATION;
    pinstance NAME upstream * migrate keep | move | after DURATION;
    pinstance NAME upstream * overlap DURATION;                # make-before-break time
    pinstance NAME downstream IF subscribers P ...;            # its subscriber prefixes

    TABLE := table NAME | table { RULE ... }
    RULE  := [IF] "(" GROUP "|" SOURCE ")" | "(" table NAME ")" | "(" table { RULE ... } ")"
    GROUP, SOURCE := * | ADDR | ADDR/LEN | BOUND - BOUND        BOUND := * | ADDR

Timer KEYs: robustness, query-interval, query-response-interval, last-listener-query-interval,
last-listener-query-count, startup-query-interval, startup-query-count, gmi-qri-factor.
Durations are seconds: ``125``, ``125s``, ``500ms``, ``1.5s``.

Defaults (what other modules rely on):

- protocol IGMPv3 when absent; ``Config.family`` 4 or 6 and ``Config.version`` follow it.
- Table ids, as mcproxy numbers them: a lone instance without an id uses the kernel's
  default multicast table (``DEFAULT_TABLE``: 253 for IPv4, 254 for IPv6); with several
  instances, taken sorted by name, one without an id gets the previous instance's id + 1
  (starting at 1), so counting continues after an explicit id (ids in use are skipped).
- Interface wildcards (our extension): a name ending in ``+`` (iptables) or ``*`` stands
  for every interface whose name starts with what comes before it; matching interfaces
  join the instance in that role when they appear and leave it when they disappear. A
  filter binding may name a wildcard; one naming the interface itself wins.
- Like mcproxy: the last ``protocol`` line wins; an instance may have no upstream (a
  querier-only instance); an interface may be upstream and downstream of one instance
  (one vif: its querier and its host memberships, data from it treated as from a
  downstream, filters of both roles) and may be used by several instances; a name listed
  twice in one list counts once. ``disable;`` ends the file: ``parse`` raises
  ``ConfigDisabled`` after checking the statements before it.
- rulematching (mcproxy's defaults): ``in`` = first, ``out`` = all.
- An interface without a filter binding lets everything through (mcproxy's default).
- Downstream version = the protocol's version; querier election on.
- Timers: profile ``default`` (RFC 3376/3810 values) unless a ``timers`` statement says otherwise.
- The unspecified address (0.0.0.0, ::) in a rule means ``*``, as in mcproxy.

Statements may come in any order (tables and instances may be used before they are
defined). Every error is a ``ConfigError`` whose text is ``path:line:col: message``.

Multiple upstreams (draft-ietf-pim-multiple-upstreams-reqs, the paper's section V). A file
that uses none of the ``priority``/``select``/``default``/``takeover``/``revert``/
``migrate``/``overlap`` statements keeps mcproxy's meaning (``rulematching``); one that uses
any of them gives the instance a ``Selection`` (``Instance.selection``), and then every
upstream is a *candidate*:

- A candidate has an interface priority (default 0; higher wins) and selection records
  ``(subscriber, source, group)``; each part is ``*`` (null, the default), an address or a
  prefix ``P``. A candidate without ``select`` statements has the one record ``(* | * | *)``,
  unless it is the ``default`` upstream.
- Channel-based selection matches ``source``/``group`` against the (S,G) or (*,G) asked
  for; subscriber-based selection matches ``subscriber`` against the subscriber prefixes
  of the downstream link the request came from: the ``subscribers`` option of that
  downstream, or else the global prefixes configured on the interface. A record matches a
  link when one of the link's prefixes lies inside its subscriber prefix. A record with a
  source part matches only source-specific requests (INCLUDE, or the listed sources of an
  EXCLUDE request when the part is a single address).
- Precedence: a record with a subscriber prefix beats one without, then one with a source
  prefix beats one without, then one with a group prefix beats one without (so
  source+group > source > group > null); within the same kind the longer prefixes win
  (subscriber, then source, then group length); then the higher interface priority; all
  candidates still tied are selected together (robust reception).
- Only usable candidates take part: the link is up and, with ``takeover no-querier T``, a
  query was heard within T (``takeover off``: always usable). When no usable candidate has
  a matching record the request goes to the ``default`` upstream, or without one to the
  usable candidate with the highest priority and then the highest address.
- ``revert``: when a better candidate becomes usable again, existing subscriptions move
  back at once (``immediate``, the default), stay where they are (``never``), or the
  candidate is used again only once it has been usable for DURATION (``after``).
- ``migrate``: when a reload changes where a subscription goes, existing subscriptions keep
  their upstream until they end (``keep``, the default), move at once (``move``), or move
  after DURATION. New subscriptions always follow the new configuration.
- Every move that is not a failure is make-before-break: the old upstream stays joined for
  ``overlap`` (default 1s; 0 switches at once).
- ``rulematching in`` does not combine with selection (an error); ``rulematching out`` and
  the filters keep their meaning (a candidate whose ``in`` filter refuses a request is not
  used for it).
"""

from proxy.config.build import load, parse
from proxy.config.model import (
    AUTO_TABLE_BASE,
    DEFAULT_PROTOCOL,
    DEFAULT_TABLE,
    PROTOCOLS,
    Config,
    ConfigDisabled,
    ConfigError,
    DownstreamOptions,
    Instance,
    is_wildcard,
    wildcard_matches,
)
from proxy.config.render import render
from proxy.config.rules import (
    DEFAULT_RULE_MATCHING,
    AddressMatch,
    FilterBinding,
    Network,
    Rule,
    RuleMatching,
    Table,
)
from proxy.config.selection import (
    CATCH_ALL,
    DEFAULT_MIGRATE,
    DEFAULT_OVERLAP,
    DEFAULT_REVERT,
    Candidate,
    Selection,
    SelectionRecord,
    SwitchPolicy,
    Takeover,
)
from proxy.timers import MOBILITY, PROFILES, Timers

__all__ = [
    "AUTO_TABLE_BASE",
    "CATCH_ALL",
    "DEFAULT_MIGRATE",
    "DEFAULT_OVERLAP",
    "DEFAULT_PROTOCOL",
    "DEFAULT_REVERT",
    "DEFAULT_RULE_MATCHING",
    "DEFAULT_TABLE",
    "MOBILITY",
    "PROFILES",
    "PROTOCOLS",
    "AddressMatch",
    "Candidate",
    "Config",
    "ConfigDisabled",
    "ConfigError",
    "DownstreamOptions",
    "FilterBinding",
    "Instance",
    "Network",
    "Rule",
    "RuleMatching",
    "Selection",
    "SelectionRecord",
    "SwitchPolicy",
    "Table",
    "Takeover",
    "Timers",
    "is_wildcard",
    "load",
    "parse",
    "render",
    "wildcard_matches",
]

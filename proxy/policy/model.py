"""The policy file (YAML): who may call and with what. Validated once, when loaded; never on the request path.

Identity: the scopes that exist, the superscope, roles (ceilings), the scopes OAuth tokens may never hold, the
token issuers. Authorization: rules for tools (exact name or glob), prompts and resources (URI patterns), each with
the scopes it needs (all of them), its effect (read | write), whether a write needs confirmation, and how the
workspace argument is handled. What no rule names gets `default`: `deny`, or `annotations` (the upstream's
`readOnlyHint` picks the read or the write scope; annotations never override a rule). Any section this version
does not know is an error, so a file written for a later version is refused rather than half-enforced.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from proxy.policy import source
from proxy.policy.conditions import ConditionError, compile_condition
from proxy.policy.pins import PinFileError, PinSet
from proxy.policy.pins import load as load_pins
from proxy.policy.source import Located

WORKSPACE_SEGMENT = "{workspace}"  # in a resource rule's match: one URI segment, and it names the workspace
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")
Scope = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:*\-]+$")]


class PolicyError(Exception):
    """Every problem found in a policy file, one per line: file, path, what was expected."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Issuer(Strict):
    issuer: str = Field(min_length=1, description="the `iss` value tokens must carry")
    kind: Literal["oauth", "jwt"] = "oauth"
    jwks_url: str | None = None
    public_key_file: str | None = None
    algorithms: tuple[Literal[ALGORITHMS], ...] = ("RS256", "ES256", "EdDSA")  # type: ignore[valid-type]
    audience: str | None = Field(None, description="defaults to SCOPEGATE_PUBLIC_URL")
    role_claim: str = "role"
    jwks_ttl_seconds: float = Field(300.0, gt=0)
    jwks_min_refetch_seconds: float = Field(30.0, ge=0, description="least time between fetches for unknown kids")

    @model_validator(mode="after")
    def one_key_source(self) -> Issuer:
        if (self.jwks_url is None) == (self.public_key_file is None):
            raise ValueError("give exactly one of jwks_url and public_key_file")
        if self.jwks_url is not None and not self.jwks_url.startswith(("https://", "http://")):
            raise ValueError("jwks_url must be an http(s) URL")
        return self


class OAuthClient(Strict):
    """A client known in advance (no registration needed): public, PKCE, these redirect URIs exactly."""

    client_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    client_name: str = Field(min_length=1, max_length=200)
    redirect_uris: tuple[str, ...] = Field(min_length=1, max_length=10)
    # shown on the consent page as the organisation's word about the app (only for clients the policy names)
    client_uri: str | None = Field(None, max_length=500, pattern=r"^https://[^\s]+$")  # its homepage
    tos_uri: str | None = Field(None, max_length=500, pattern=r"^https://[^\s]+$")  # its terms of service
    policy_uri: str | None = Field(None, max_length=500, pattern=r"^https://[^\s]+$")  # its privacy policy


class OidcSignIn(Strict):
    """People sign in through the organisation's OpenID Connect provider; their role comes from a claim."""

    issuer: str = Field(min_length=1)  # the provider; discovery at <issuer>/.well-known/openid-configuration
    client_id: str = Field(min_length=1)  # its secret, if any: SCOPEGATE_OIDC_CLIENT_SECRET_FILE
    name: str = Field("your organisation's sign-in", min_length=1, max_length=100)  # shown on the button
    scopes: tuple[str, ...] = ("openid", "email")
    subject_claim: str = "email"  # who the person is here (falls back to `sub`)
    role_claim: str = "groups"  # a string or a list of strings
    roles: dict[str, str] = Field(min_length=1)  # claim value -> policy role; the first that matches, in this order


class OAuth(Strict):
    """scopegate's own OAuth 2.1 authorization server; on when the policy has this section."""

    scopes: tuple[Scope, ...] = ()  # what clients may be granted; default: `scopes` less `oauth_excluded_scopes`
    sign_in: tuple[Literal["pat", "admin_key", "oidc"], ...] = ("pat",)  # how a person may sign in
    access_token_ttl_seconds: int = Field(1800, ge=60, le=3600)
    refresh_token_ttl_seconds: int = Field(30 * 86400, ge=3600, le=90 * 86400)
    # A grant's absolute lifetime: past it no refresh works and the person consents again, however active the app.
    grant_lifetime_seconds: int = Field(90 * 86400, ge=3600, le=365 * 86400)
    max_grants_per_person: int = Field(50, ge=1, le=1000)  # live app grants one person may hold
    dynamic_registration: bool = True  # RFC 7591 /register
    client_id_metadata_documents: bool = True  # client_id may be an https URL naming the client's metadata
    clients: tuple[OAuthClient, ...] = ()
    oidc: OidcSignIn | None = None


class DryRun(Strict):
    argument: str = Field(min_length=1)  # e.g. dry_run
    value: bool | int | str = True


class Approvers(Strict):
    """Who may approve on the page: a person whose role is one of `roles` or whose subject is one of `subjects`.
    Both empty: anyone who signs in holding every scope the rule asks of a caller."""

    roles: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()


class Approve(Strict):
    """How a `confirm: human` write is approved. `client`: the person at the agent's own client answers a form
    (elicitation). `page`: a named person signs in on scopegate's approval page and approves there."""

    via: Literal["page", "client"] = "client"
    approvers: Approvers = Approvers()
    four_eyes: bool = False  # the requester's own subject may not approve
    # The upstream's dry run shown on the page is flagged stale once it is older than this (None: never).
    fresh_seconds: int | None = Field(None, ge=1, le=86400)


class When(Strict):
    """A condition on a rule (proxy/policy/conditions.py): when the CEL expression holds for a call, the call is
    denied, or held for a token confirmation or a person's approval, and the caller is told `reason`."""

    when: str = Field(min_length=1, max_length=2000, description="a CEL expression over `args`, `principal` "
                      "(subject, kind, scopes, workspace, role, client, credential), `now` (UTC) and `name`")
    then: Literal["deny", "token", "human"] = Field(description="deny the call, or hold it for a token "
                                                    "confirmation or a person's approval")
    reason: str = Field(min_length=1, max_length=300, description="what the caller is told")

    @field_validator("when")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compile_condition(value, "deny", "", "")
        except ConditionError as exc:
            raise ValueError(str(exc)) from None
        return value


class Mask(Strict):
    """Need to know (guards/need_to_know.py): these fields of a tool's `structuredContent`, at any depth, and the
    same values wherever they appear in its text content, are masked for callers without the `unless` scope."""

    fields: tuple[str, ...] = Field(min_length=1, max_length=64, description="property names, at any depth")
    unless: Scope = Field(description="callers holding this scope (or the superscope) see the values")
    keep_last: int = Field(0, ge=0, le=8, description="characters left visible at the end (an IBAN's last 4)")


class Rule(Strict):
    match: str = Field(min_length=1, description="exact name, or a glob (`journal_*`); resources: a URI pattern")
    scopes: tuple[Scope, ...] = ()
    effect: Literal["read", "write"] = "read"
    # Who confirms a write: `token` (the agent brings the preview's token back), `human` (the person at the client
    # approves through MCP elicitation), `none`. `true` means `token`, `false` means `none`; unset: token for writes.
    confirm: Annotated[Literal["token", "human", "none"] | None, WithJsonSchema({"anyOf": [
        {"enum": ["token", "human", "none"], "type": "string"},
        {"type": "boolean", "description": "true: token, false: none (the loader accepts both)"},
        {"type": "null"}]})] = None
    fallback: Literal["refuse", "token"] = "refuse"  # `confirm: human` and a client that cannot show a form
    approve: Approve | None = None  # `confirm: human`: who approves, and where (unset: the client, as `via: client`)
    confirm_ttl_seconds: int | None = Field(None, ge=5, le=86400)  # default: the policy's
    dry_run: DryRun | None = None  # the upstream's own preview: the call is made once with this argument set
    redact: tuple[str, ...] = ()  # argument names masked in previews (and never stored)
    # None: not said, so the upstream's own schema decides (a workspace argument means `inject`); `none` says the
    # tool acts in no workspace, whatever its schema shows.
    workspace: Literal["none", "inject", "require", "verify"] | None = None
    # Its results come from outside anyone's control (mail, web, documents): marked, and writes after them held
    # (the policy's `provenance:`), as for a tool the upstream marks openWorldHint: true.
    untrusted: bool = False
    description: str = ""
    # Stricter for some calls: the strictest condition that holds decides (deny, human, token); none: the rule.
    conditions: tuple[When, ...] = Field((), max_length=32)
    mask: Mask | None = None  # results on a need-to-know basis: fields masked for callers without a scope

    @field_validator("confirm", mode="before")
    @classmethod
    def _confirm_bool(cls, value: object) -> object:
        return {True: "token", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @property
    def needs_confirmation(self) -> bool:
        return self.effect == "write" if self.confirm is None else self.confirm != "none"

    @property
    def confirmer(self) -> Literal["token", "human"]:
        return "human" if self.confirm == "human" else "token"

    @property
    def on_page(self) -> bool:
        """A `confirm: human` write approved by a signed-in person on the approval page."""
        return self.confirm == "human" and self.approve is not None and self.approve.via == "page"


class Limit(Strict):
    """A rate limit on tool calls (proxy/ratelimit.py, guards/limits.py): at most `rate` calls per `period_seconds`
    for each combination of what it is counted `per`, `burst` of them at once. Shared by every replica through
    Redis; in memory with one. A call past it is refused with 429 and Retry-After."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,39}$", description="how refusals, the audit trail and the "
                      "metric name it (one word)")
    match: str = Field("*", min_length=1, description="the tools it counts: an exact name or a glob")
    per: tuple[Literal["credential", "person", "tool", "workspace"], ...] = Field(
        (), max_length=4, description="what it is counted per, together; none: one count for every caller")
    rate: int = Field(ge=1, le=1_000_000)
    period_seconds: float = Field(gt=0, le=31 * 86400)
    burst: int | None = Field(None, ge=1, le=1_000_000, description="calls let through at once; default: rate")


class Anonymous(Strict):
    """Requests without a credential (off unless the policy has this section): a public read-only server, or a
    conformance run. They act as one principal holding exactly these scopes; a bad token is still 401."""

    scopes: tuple[Scope, ...] = ()
    workspace: str | None = Field(None, min_length=1)  # bound: injected, and the only one they may name


class TokenExchange(Strict):
    """RFC 8693: scopegate trades the caller's assertion for a token of the upstream's own identity provider and sends
    it in the upstream's `Authorization` header (see proxy/identity/token_exchange.py)."""

    token_endpoint: str = Field(min_length=1, description="the provider's token endpoint (http or https)")
    client_id: str = Field(min_length=1, max_length=200, description="scopegate's client id there (its secret: "
                           "SCOPEGATE_TOKEN_EXCHANGE_CLIENT_SECRET_FILE; none: a public client)")
    audience: str | None = Field(None, min_length=1, description="the `audience` parameter: whom the token is for")
    resource: str | None = Field(None, min_length=1, description="the `resource` parameter (RFC 8707)")
    send_scopes: bool = True  # ask for the caller's effective scopes (`scope`)
    subject_audience: str | None = Field(None, min_length=1, description="the subject token's `aud`; default: the "
                                         "token endpoint")

    @model_validator(mode="after")
    def _endpoint_is_a_url(self) -> TokenExchange:
        if not self.token_endpoint.startswith(("https://", "http://")):
            raise ValueError("token_endpoint must be an http(s) URL")
        return self


class UpstreamIdentity(Strict):
    """A signed assertion of who is calling, on every request scopegate forwards (see proxy/identity/assertion.py):
    the upstream verifies it with scopegate's JWKS and can attribute and authorise by person."""

    header: str = Field("x-scopegate-identity", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$",
                        description="the header it travels in; `authorization` sends `Bearer <assertion>`")
    audience: str | None = Field(None, min_length=1, description="its `aud`; default: the upstream URL")
    ttl_seconds: int = Field(60, ge=10, le=3600)  # its lifetime: exp - iat
    # A read's assertion is reused for this long by the next reads of the same person, credential, scopes and
    # workspace (a signature costs more than the rest of a small call); 0: every request gets its own.
    reuse_seconds: int = Field(30, ge=0, le=1800)
    token_exchange: TokenExchange | None = None  # also a token of the upstream's own provider, in `Authorization`

    @model_validator(mode="after")
    def _reuse_within_life(self) -> UpstreamIdentity:
        if self.reuse_seconds * 2 > self.ttl_seconds:
            raise ValueError("reuse_seconds may be at most half of ttl_seconds: a reused assertion must still have "
                             "half its life left when it reaches the upstream")
        if self.token_exchange is not None and self.header.lower() == "authorization":
            raise ValueError("with token_exchange the exchanged token takes the Authorization header: name another "
                             "header for the assertion")
        return self


class Pins(Strict):
    """The upstream's tools, prompts and resource templates as reviewed (`scopegate pins update` writes the file):
    what no longer matches its pin is handled as `on_drift` says (see proxy/policy/pins.py)."""

    file: str = Field(min_length=1, description="the pin file; relative to the policy file's folder")
    # hide: not listed, calls refused; hold: listed, every call held for approval; report: audited and counted only.
    # A tool that stops being destructive or gains a required argument is always at least held.
    on_drift: Literal["hide", "hold", "report"] = "hide"
    unpinned: Literal["hide", "allow"] = "hide"  # items the pin file does not name (new ones)
    hold_confirm: Literal["human", "token"] = "human"  # who confirms a held call (`confirm:` of a rule)


class Provenance(Strict):
    """Output from tools that read the open world (the upstream's openWorldHint: true, or a rule's untrusted: true)
    is marked in its result's `_meta`, and once a session (or, for stateless calls, a credential) has had some, its
    writes are held for a while (see proxy/guards/provenance.py)."""

    spotlight: bool = False  # also wrap such results' text content in delimiters the client can show
    hold_writes: tuple[str, ...] = ("*",)  # tool globs: writes of these need approval after untrusted output
    window_seconds: int = Field(900, ge=10, le=86400)  # how long after the first untrusted result
    confirm: Literal["human", "token"] = "human"  # who confirms such a write


class ScopeInfo(Strict):
    """A scope with words people can judge it by (the consent page, the console); a plain string is the name alone."""

    name: Scope
    title: str | None = Field(None, min_length=1, max_length=80)
    description: str | None = Field(None, min_length=1, max_length=400)


_SCOPE_ENTRY = {"anyOf": [{"type": "string", "pattern": r"^[A-Za-z0-9_.:*\-]+$", "minLength": 1, "maxLength": 128},
                          {"type": "object", "additionalProperties": False, "required": ["name"],
                           "properties": {"name": {"type": "string", "pattern": r"^[A-Za-z0-9_.:*\-]+$",
                                                   "minLength": 1, "maxLength": 128},
                                          "title": {"type": "string", "minLength": 1, "maxLength": 80},
                                          "description": {"type": "string", "minLength": 1, "maxLength": 400}}}]}


def _unknown_key(error: Any, where: tuple[Any, ...]) -> Any:
    """A `scopes:` entry's unknown key, said with the keys an entry has (the generic did-you-mean cannot see them)."""
    import difflib

    key = str(error["loc"][-1])
    close = difflib.get_close_matches(key, list(ScopeInfo.model_fields), n=1)
    hint = f"did you mean `{close[0]}`?" if close else "expected name, title, description"
    return {"type": "value_error", "loc": (*where, *error["loc"]), "input": error["input"],
            "ctx": {"error": ValueError(f"unknown key `{key}` ({hint})")}}


class Policy(Strict):
    version: Literal[1]
    name: str = ""
    description: str = ""
    title: str | None = Field(None, min_length=1, max_length=100)  # the service's name as people read it (pages)
    # Each entry a name, or {name, title, description}: the words the consent page and the console show.
    scopes: Annotated[tuple[Scope, ...], WithJsonSchema({"type": "array", "items": _SCOPE_ENTRY})] = ()
    administrators: tuple[str, ...] = ()  # roles whose members use the console and the admin API as administrators
    superscope: Scope | None = None
    read_scope: Scope | None = None  # what `default: annotations` asks of a read-only tool
    write_scope: Scope | None = None  # ... and of any other tool
    oauth_excluded_scopes: tuple[Scope, ...] = ()
    roles: dict[str, tuple[Scope, ...]] = Field(default_factory=dict)
    issuers: tuple[Issuer, ...] = ()
    oauth: OAuth | None = None
    anonymous: Anonymous | None = None
    upstream_headers: tuple[str, ...] = ()  # server-side headers the upstream needs; their values come from outside
    upstream_identity: UpstreamIdentity | None = None  # a signed assertion of the caller on every forwarded request
    default: Literal["deny", "annotations"] = "deny"
    workspace_property: str = Field("workspaceId", min_length=1)  # the argument that names the workspace
    project_property: str = Field("projectId", min_length=1)
    check_projects: bool = False  # verify the project argument against the credential's projects
    hide_bound_workspace: bool = False  # a bound credential's lists do not show the workspace argument at all
    confirm_ttl_seconds: int = Field(300, ge=5, le=86400)  # how long a confirmation token stays valid
    tools: tuple[Rule, ...] = ()
    prompts: tuple[Rule, ...] = ()
    resources: tuple[Rule, ...] = ()
    pins: Pins | None = None  # tool drift: definitions checked against a reviewed pin file
    provenance: Provenance | None = None  # untrusted output marked; writes after it held
    _pin_set: PinSet | None = PrivateAttr(None)  # the pin file as loaded with the policy (load_located)
    _scope_info: dict[str, ScopeInfo] = PrivateAttr(default_factory=dict)

    @property
    def pin_set(self) -> PinSet | None:
        return self._pin_set
    limits: tuple[Limit, ...] = Field((), max_length=32)  # rate limits on tool calls

    @property
    def scope_info(self) -> dict[str, ScopeInfo]:
        """The title and description of each scope that has them (`scopes:` entries written as mappings)."""
        return self._scope_info

    @model_validator(mode="wrap")
    @classmethod
    def _scope_entries(cls, data: Any, handler: Any) -> Policy:
        """`scopes:` entries may be mappings: the model keeps names (what every decision reads), the words aside."""
        info: dict[str, ScopeInfo] = {}
        if isinstance(data, dict) and isinstance(data.get("scopes"), list | tuple):
            names: list[Any] = []
            for n, entry in enumerate(data["scopes"]):
                if isinstance(entry, dict):
                    try:
                        described = ScopeInfo.model_validate(entry)
                    except ValidationError as exc:  # said where it is: scopes.<n>.<field>
                        raise ValidationError.from_exception_data(cls.__name__, [
                            _unknown_key(e, ("scopes", n)) if e["type"] == "extra_forbidden" else
                            {"type": e["type"], "loc": ("scopes", n, *e["loc"]), "input": e["input"],
                             **({"ctx": e["ctx"]} if "ctx" in e else {})} for e in exc.errors()]) from None
                    info[described.name] = described
                    names.append(described.name)
                else:
                    names.append(entry)
            data = {**data, "scopes": names}
        policy = handler(data)
        policy._scope_info = info
        return policy

    @model_validator(mode="after")
    def _annotations_need_scopes(self) -> Policy:
        if self.default == "annotations" and (self.read_scope is None or self.write_scope is None):
            raise ValueError("`default: annotations` needs `read_scope` and `write_scope`")
        return self

    def ceiling(self, role: str | None) -> tuple[str, ...] | None:
        """The most a member of `role` may hold; None when the policy has no roles. Unknown or missing role: nothing."""
        if not self.roles:
            return None
        return self.roles.get(role or "", ())


EMPTY = Policy(version=1)


def _expression_positions(located: Located, exc: ValidationError) -> dict[source.Loc, tuple[int, int]]:
    """Where in the file each condition that does not compile goes wrong: the expression's own line and column
    from the start of its value (a plain or quoted scalar on one line, or a block scalar's lines)."""
    found: dict[source.Loc, tuple[int, int]] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        if not loc or loc[-1] != "when" or not isinstance(err.get("input"), str):
            continue
        try:
            compile_condition(err["input"], "deny", "", "")
        except ConditionError as problem:
            where = located.values.get(loc)
            if where is not None:
                found[loc] = where.at(problem.line, problem.column)
    return found


def schema_text() -> str:
    """The JSON Schema of a policy file, as published in policies/policy.schema.json for editors."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **Policy.model_json_schema(),
              "title": "scopegate policy"}
    return json.dumps(schema, indent=2, sort_keys=False)


def approve_problems(policy: Policy, rule: Rule, where: tuple[str | int, ...]) -> list[source.Problem]:
    """What is wrong with a rule's `approve:` section, given the rest of the policy. Pure."""
    approve = rule.approve
    assert approve is not None
    at = (*where, "approve")
    if rule.confirm != "human":
        return [(at, "only a rule with `confirm: human` has an `approve` section")]
    problems: list[source.Problem] = []
    if approve.via == "client":
        if approve.approvers != Approvers() or approve.four_eyes or approve.fresh_seconds is not None:
            problems.append((at, "approvers, four_eyes and fresh_seconds need `via: page`: the person at the "
                             "client is not signed in, so nobody can tell who they are"))
        return problems
    if rule.fallback == "token":
        problems.append(((*where, "fallback"), "`fallback: token` would let the agent confirm what `via: page` "
                         "keeps for a signed-in approver: remove it"))
    if policy.oauth is None or not policy.oauth.sign_in:
        problems.append(((*at, "via"), "`via: page` needs a way for the approver to sign in: add an `oauth:` "
                         "section (its `sign_in`: pat, admin_key or oidc)"))
    for n, role in enumerate(approve.approvers.roles):
        if role not in policy.roles:
            known = ", ".join(sorted(policy.roles)) or "none"
            problems.append(((*at, "approvers", "roles", n), f"role {role!r} is not one of the policy's roles "
                             f"({known})"))
    return problems


def load_policy(path: str | Path) -> Policy:
    return load_located(path)[0]


def pins_path(policy_path: str | Path, policy: Policy) -> Path | None:
    """Where the policy's pin file is: relative names are beside the policy file."""
    if policy.pins is None:
        return None
    return Path(policy_path).parent / policy.pins.file


def load_located(path: str | Path, *, read_pins: bool = True) -> tuple[Policy, Located]:
    """The policy and where each of its parts is in the file. Raises PolicyError: every problem, one per line, as
    `file:line:column: dotted.path: what was expected`."""
    path = Path(path)
    try:
        located = source.read(path)
    except source.SourceError as exc:
        raise PolicyError(str(exc)) from None
    if not isinstance(located.data, dict):
        raise PolicyError(f"{path}:1:1: (top level): expected a mapping with `version: 1`")
    try:
        policy = Policy.model_validate(located.data)
    except ValidationError as exc:
        problems = source.schema_problems(Policy, exc)
        raise PolicyError("\n".join(source.report(path, located, problems, _expression_positions(located, exc))))\
            from None
    problems: list[source.Problem] = []
    known = set(policy.scopes)
    for role, scopes in policy.roles.items():
        for scope in scopes:
            if "*" not in scope and known and scope not in known:
                problems.append((("roles", role), f"scope {scope!r} is not in `scopes`"))
    for section in ("tools", "prompts", "resources"):
        seen: set[str] = set()
        for index, rule in enumerate(getattr(policy, section)):
            where = (section, index)
            if rule.match in seen:
                problems.append(((*where, "match"), f"{rule.match!r} is matched by an earlier rule already"))
            seen.add(rule.match)
            problems += [((*where, "scopes", n), f"scope {scope!r} is not in `scopes`")
                         for n, scope in enumerate(rule.scopes) if known and scope not in known]
            tool_only = (rule.effect != "read" or rule.confirm not in (None, "none")
                         or rule.workspace is not None or rule.dry_run or rule.redact or rule.confirm_ttl_seconds
                         or rule.fallback != "refuse" or rule.untrusted or rule.approve is not None
                         or rule.mask is not None)
            if section != "tools" and tool_only:
                problems.append((where, "effect, confirm, dry_run, redact, mask and workspace apply to tools only"))
            if rule.mask is not None and known and rule.mask.unless not in known:
                problems.append(((*where, "mask", "unless"), f"scope {rule.mask.unless!r} is not in `scopes`"))
            if section != "tools" and any(c.then != "deny" for c in rule.conditions):
                problems.append(((*where, "conditions"), "only a tool's condition may ask for confirmation "
                                 "(token, human); others may only deny"))
            if rule.fallback != "refuse" and rule.confirm != "human":
                problems.append(((*where, "fallback"), "only a rule with `confirm: human` has a fallback"))
            if section == "tools" and rule.approve is not None:
                problems += approve_problems(policy, rule, where)
            rest = rule.match.replace(WORKSPACE_SEGMENT, "", 1 if section == "resources" else 0)
            if "{" in rest or "}" in rest:
                problems.append(((*where, "match"), f"only a resource URI may hold {WORKSPACE_SEGMENT}, once, "
                                 "and no other braces"))
    if policy.oauth is not None:
        oidc = policy.oauth.oidc
        if ("oidc" in policy.oauth.sign_in) != (oidc is not None):
            problems.append((("oauth",), "sign_in names oidc exactly when there is an oauth.oidc section"))
        if oidc is not None and not policy.roles:
            problems.append((("oauth", "oidc"), "needs `roles`: a person's role is what caps what they may grant"))
        for value, role in (oidc.roles.items() if oidc else ()):
            if policy.roles and role not in policy.roles:
                problems.append((("oauth", "oidc", "roles", value), f"{role!r} is not one of the policy's roles"))
        for n, scope in enumerate(policy.oauth.scopes):
            if known and scope not in known:
                problems.append((("oauth", "scopes", n), f"scope {scope!r} is not in `scopes`"))
            if any(scope == p or ("*" in p and fnmatchcase(scope, p)) for p in policy.oauth_excluded_scopes):
                problems.append((("oauth", "scopes", n), f"{scope!r} is in `oauth_excluded_scopes`"))
    named: set[str] = set()
    for index, limit in enumerate(policy.limits):
        if limit.name in named:
            problems.append((("limits", index, "name"), f"{limit.name!r} names an earlier limit already"))
        named.add(limit.name)
        if len(set(limit.per)) != len(limit.per):
            problems.append((("limits", index, "per"), "names something twice"))
    if policy.anonymous is not None:
        problems += [(("anonymous", "scopes", n), f"scope {scope!r} is not in `scopes`")
                     for n, scope in enumerate(policy.anonymous.scopes) if known and scope not in known]
    for n, role in enumerate(policy.administrators):
        if role not in policy.roles:
            problems.append((("administrators", n), f"{role!r} is not one of the policy's roles"))
    for name in ("superscope", "read_scope", "write_scope"):
        value = getattr(policy, name)
        if value is not None and known and value not in known:
            problems.append(((name,), f"scope {value!r} is not in `scopes`"))
    if policy.pins is not None and read_pins:
        try:
            policy._pin_set = load_pins(pins_path(path, policy))  # type: ignore[arg-type]
        except (PinFileError, OSError) as exc:
            why = exc if isinstance(exc, PinFileError) else f"{exc.strerror or exc} ({exc.filename})"
            problems.append((("pins", "file"), f"cannot read the pin file: {why} (write it with `scopegate pins "
                             "update`)"))
    if problems:
        raise PolicyError("\n".join(source.report(path, located, problems)))
    return policy, located

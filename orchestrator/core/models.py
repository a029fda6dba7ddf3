"""The core data model: who the agents are, what they share, and what happened.

Rules the database can enforce are constraints here, so that a bug in a
service (or a concurrent one) fails loudly at commit instead of corrupting
state: one live exclusive lock per resource, fences unique per resource,
one waiting request per agent and resource, one open deadlock per cycle.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import models
from django.db.models import F, Q

NAME_MAX_LENGTH = 200
# Separates a team's name from a resource's in a qualified name (``team::name``): an
# agent names another team's resource, which a grant shares with its team, that way
# (core/tenancy.py). Neither a team's nor a resource's name may contain it.
TEAM_SEPARATOR = "::"


def no_team_separator(name: str) -> None:
    """A team's or a resource's name must not contain TEAM_SEPARATOR."""
    if TEAM_SEPARATOR in name:
        raise ValidationError(
            f"A name must not contain {TEAM_SEPARATOR!r}: it separates a team's name from "
            "a resource's (team::name)."
        )


class DeadlockPolicy(models.TextChoices):
    ASK_OPERATOR = "ask_operator", "Ask an operator to choose the victim"
    ABORT_YOUNGEST = "abort_youngest", "Abort the youngest waiter"
    ABORT_LEAST_PROGRESS = "abort_least_progress", "Abort the agent with least progress"


class ConflictPolicy(models.TextChoices):
    REJECT = "reject", "Reject the write; the agent re-reads and retries"
    ASK_OPERATOR = "ask_operator", "Turn the write into an approval for an operator"


class Team(models.Model):
    name = models.CharField(max_length=NAME_MAX_LENGTH, unique=True, validators=[no_team_separator])
    description = models.TextField(blank=True)
    deadlock_policy = models.CharField(
        max_length=32, choices=DeadlockPolicy.choices, default=DeadlockPolicy.ASK_OPERATOR
    )
    conflict_policy = models.CharField(
        max_length=32, choices=ConflictPolicy.choices, default=ConflictPolicy.REJECT
    )
    default_lease_ttl = models.PositiveIntegerField(
        default=30, help_text="Seconds a lock lease lasts unless the agent asks otherwise."
    )
    renew_leases_while_paused = models.BooleanField(
        default=False,
        help_text="Keep renewing the leases of paused agents (otherwise they expire).",
    )
    # Pause by policy (core/control.py agent_pause_by_policy).
    pause_after_conflicts = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Pause an agent whose stale-fence and write conflicts reach this many "
        "within the window below (counted since it was last resumed); empty: never.",
    )
    pause_conflict_window = models.PositiveIntegerField(
        default=10, help_text="Minutes over which an agent's conflicts are counted."
    )
    # Notifications (core/notifications.py, docs/notifications.md).
    operators = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="notified_teams",
        help_text="Who is e-mailed about this team's incidents. Empty: every active member "
        "of the operators group with an e-mail address. (Who may act is still decided "
        "by the groups.)",
    )
    email_notifications = models.BooleanField(
        default=True, help_text="E-mail the team's operators about its incidents."
    )
    paused = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(default_lease_ttl__gte=1) & Q(default_lease_ttl__lte=86400),
                name="team_lease_ttl_range",
            ),
            models.CheckConstraint(
                condition=Q(pause_conflict_window__gte=1), name="team_pause_window_positive"
            ),
            models.CheckConstraint(
                condition=Q(pause_after_conflicts__isnull=True) | Q(pause_after_conflicts__gte=1),
                name="team_pause_after_positive",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class Backend(models.TextChoices):
    SCRIPTED = "scripted", "Scripted (deterministic, seeded)"
    OPENAI = "openai", "OpenAI-compatible model"
    PYTHON = "python", "Python callable"


class AgentStatus(models.TextChoices):
    IDLE = "idle", "Idle"
    RUNNING = "running", "Running"
    WAITING_LOCK = "waiting_lock", "Waiting for a lock"
    WAITING_HUMAN = "waiting_human", "Waiting for a human"
    FAILED = "failed", "Failed"
    DONE = "done", "Done"


class Agent(models.Model):
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="agents")
    name = models.CharField(max_length=NAME_MAX_LENGTH, unique=True)
    role = models.TextField(blank=True, help_text="What this agent is for, given to its model.")
    backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.SCRIPTED)
    config = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=AgentStatus.choices, default=AgentStatus.IDLE)
    paused = models.BooleanField(default=False)
    # SHA-256 of the API token; the token itself is shown once and never stored.
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True, editable=False)
    token_created_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "name"]
        indexes = [models.Index(fields=["team", "status"], name="agent_team_status")]

    def __str__(self) -> str:
        return self.name


class Resource(models.Model):
    """A shared thing agents lock, read and write. It belongs to a team: that team's
    agents act on it, other teams' agents only through a ResourceGrant."""

    name = models.CharField(max_length=NAME_MAX_LENGTH, validators=[no_team_separator])
    team = models.ForeignKey(
        Team,
        on_delete=models.PROTECT,
        related_name="resources",
        help_text="The team that owns it; other teams reach it only through a grant.",
    )
    value = models.JSONField(null=True, blank=True)
    version = models.BigIntegerField(default=0, editable=False)
    fence = models.BigIntegerField(
        default=0, editable=False, help_text="The last fencing token issued for this resource."
    )
    requires_approval = models.BooleanField(
        default=False, help_text="Every write waits for an operator's approval."
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            # Also the index of every name lookup, which is always within a team.
            models.UniqueConstraint(fields=["team", "name"], name="resource_name_unique_in_team"),
            models.CheckConstraint(condition=Q(version__gte=0), name="resource_version_nonneg"),
            models.CheckConstraint(condition=Q(fence__gte=0), name="resource_fence_nonneg"),
        ]
        indexes = [
            # The paths under a folder (core/paths.py): name LIKE 'src/api/%' in a team.
            models.Index(
                fields=["team", "name"],
                name="resource_path_prefix",
                opclasses=["int8_ops", "varchar_pattern_ops"],
            ),
        ]

    def __str__(self) -> str:
        return self.name


class GrantAccess(models.TextChoices):
    READ = "read", "Read (read, shared locks)"
    READ_WRITE = "read_write", "Read and write (any lock, writes, approvals)"


class ResourceGrant(models.Model):
    """One team's resource, or its resources under a name prefix, shared with another
    team. Its agents name them ``owner::name`` (core/tenancy.py)."""

    owner = models.ForeignKey(
        Team, on_delete=models.CASCADE, related_name="grants_given", help_text="The sharing team."
    )
    team = models.ForeignKey(
        Team,
        on_delete=models.CASCADE,
        related_name="grants_received",
        help_text="The team whose agents may use what is shared.",
    )
    resource = models.ForeignKey(
        Resource,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="grants",
        help_text="One resource of the owner; leave empty to share by prefix.",
    )
    prefix = models.CharField(
        max_length=NAME_MAX_LENGTH,
        blank=True,
        help_text="Without a resource: every resource of the owner whose name starts "
        "with this (empty: all of them).",
    )
    access = models.CharField(max_length=16, choices=GrantAccess.choices)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner__name", "team__name", "prefix"]
        indexes = [models.Index(fields=["team", "owner"], name="grant_team_owner")]
        constraints = [
            models.CheckConstraint(condition=~Q(team=F("owner")), name="grant_other_team"),
            models.CheckConstraint(
                condition=Q(resource__isnull=True) | Q(prefix=""), name="grant_resource_or_prefix"
            ),
        ]

    def __str__(self) -> str:
        what = self.resource.name if self.resource_id else f"{self.prefix}*"
        return f"{self.owner} shares {what} with {self.team} ({self.access})"

    def clean(self) -> None:
        if self.resource_id and self.owner_id and self.resource.team_id != self.owner_id:
            raise ValidationError({"resource": "This resource belongs to another team."})


class ResourceVersion(models.Model):
    """Append-only history of a resource's values: one row per applied write."""

    # No index of its own: resource_version_unique (resource, version) serves it.
    resource = models.ForeignKey(
        Resource, on_delete=models.CASCADE, related_name="versions", db_index=False
    )
    version = models.BigIntegerField()
    value = models.JSONField(null=True)
    agent = models.ForeignKey(Agent, on_delete=models.SET_NULL, null=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+"
    )
    fence = models.BigIntegerField(null=True)
    # Set by the runtime (step and tool call): a retried call finds its write here
    # instead of applying it a second time.
    idempotency_key = models.CharField(max_length=100, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["resource", "version"]
        constraints = [
            models.UniqueConstraint(fields=["resource", "version"], name="resource_version_unique"),
            models.UniqueConstraint(
                fields=["resource", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="resource_write_once_per_key",
            ),
            models.CheckConstraint(condition=Q(version__gte=0), name="resourceversion_nonneg"),
        ]

    def __str__(self) -> str:
        return f"{self.resource_id}@{self.version}"


class LockMode(models.TextChoices):
    EXCLUSIVE = "exclusive", "Exclusive"
    SHARED = "shared", "Shared"


class LockEnd(models.TextChoices):
    RELEASED = "released", "Released by its holder"
    EXPIRED = "expired", "Lease expired"
    REVOKED = "revoked", "Revoked to break a deadlock"
    FORCE_RELEASED = "force_released", "Force-released by an operator"


class Lock(models.Model):
    """A granted lock. Rows are kept after release: they are the lock history.

    A lock is live while ``released_at`` is null and its lease has not run
    out; an expired lease is marked released (``end=expired``) by the next
    transaction that looks at the resource, or by the monitor.
    """

    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="locks")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="locks")
    mode = models.CharField(max_length=16, choices=LockMode.choices)
    token = models.BigIntegerField(help_text="Fencing token: the resource's fence at grant time.")
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    released_at = models.DateTimeField(null=True, blank=True)
    end = models.CharField(max_length=16, choices=LockEnd.choices, blank=True)
    lock_set = models.ForeignKey(
        "LockSet", on_delete=models.SET_NULL, null=True, blank=True, related_name="locks"
    )

    class Meta:
        ordering = ["-acquired_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["resource"],
                condition=Q(released_at__isnull=True, mode="exclusive"),
                name="one_live_exclusive_lock_per_resource",
            ),
            models.UniqueConstraint(
                fields=["resource", "token"],
                condition=Q(mode="exclusive"),
                name="exclusive_fence_unique_per_resource",
            ),
            models.UniqueConstraint(
                fields=["resource", "agent"],
                condition=Q(released_at__isnull=True),
                name="one_live_lock_per_agent_and_resource",
            ),
            # Exclusive tokens start at 1; a shared lock carries the fence current at
            # grant time, which is 0 before any exclusive grant.
            models.CheckConstraint(
                condition=Q(token__gte=1) | Q(mode="shared", token__gte=0),
                name="lock_token_positive",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__gt=F("acquired_at")), name="lock_lease_after_grant"
            ),
            models.CheckConstraint(
                condition=Q(released_at__isnull=True, end="")
                # isnull=False spelled out: a NULL comparison would let the check pass.
                | Q(released_at__isnull=False, released_at__gte=F("acquired_at")) & ~Q(end=""),
                name="lock_release_consistent",
            ),
        ]
        # The live locks of a resource: one_live_lock_per_agent_and_resource
        # (resource, agent where live) serves that lookup.
        indexes = [
            models.Index(
                fields=["agent"], condition=Q(released_at__isnull=True), name="lock_live_by_agent"
            ),
            models.Index(
                fields=["expires_at"],
                condition=Q(released_at__isnull=True),
                name="lock_live_by_expiry",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mode} lock #{self.pk} on {self.resource_id} by {self.agent_id}"


class RequestStatus(models.TextChoices):
    WAITING = "waiting", "Waiting"
    GRANTED = "granted", "Granted"
    CANCELLED = "cancelled", "Cancelled"
    ABORTED = "aborted", "Aborted (deadlock victim)"


class Run(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        CANCELLED = "cancelled", "Cancelled"
        FINISHED = "finished", "Finished"
        FAILED = "failed", "Failed"

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="runs")
    goal = models.TextField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    paused = models.BooleanField(default=False)
    max_steps = models.PositiveIntegerField(default=50)
    seed = models.BigIntegerField(null=True, blank=True)
    unguarded = models.BooleanField(
        default=False,
        help_text="Bypass the protocol (no locks, no version checks) to show what fails.",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "status"], name="run_team_status")]
        constraints = [
            models.CheckConstraint(condition=Q(max_steps__gte=1), name="run_max_steps_positive"),
        ]

    def __str__(self) -> str:
        return f"run #{self.pk} of {self.team_id}"


class Step(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        WAITING = "waiting", "Waiting"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="steps")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="steps")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    job_id = models.CharField(max_length=64, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    transcript = models.JSONField(default=list, blank=True)
    tool_calls = models.JSONField(default=list, blank=True)
    error = models.TextField(blank=True)
    # The backend's decision, saved before its tool calls run: a step retried after
    # a crash replays it (skipping the calls already journaled in tool_calls).
    decision = models.JSONField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "agent", "number"]
        constraints = [
            models.UniqueConstraint(fields=["run", "agent", "number"], name="step_number_unique"),
        ]
        indexes = [models.Index(fields=["status"], name="step_status")]

    def __str__(self) -> str:
        return f"step {self.number} of {self.agent_id} in run {self.run_id}"


class LockRequest(models.Model):
    """A queued acquisition. Waiting requests are the edges of the wait-for graph."""

    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="requests")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="lock_requests")
    mode = models.CharField(max_length=16, choices=LockMode.choices)
    ttl = models.PositiveIntegerField(help_text="Lease seconds to grant with.")
    status = models.CharField(
        max_length=16, choices=RequestStatus.choices, default=RequestStatus.WAITING
    )
    step = models.ForeignKey(
        Step, on_delete=models.SET_NULL, null=True, blank=True, related_name="lock_requests"
    )
    lock = models.OneToOneField(
        Lock, on_delete=models.SET_NULL, null=True, blank=True, related_name="request"
    )
    reason = models.TextField(blank=True)
    requested_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)
    lock_set = models.ForeignKey(
        "LockSet", on_delete=models.SET_NULL, null=True, blank=True, related_name="requests"
    )

    class Meta:
        ordering = ["requested_at", "pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["resource", "agent"],
                condition=Q(status="waiting"),
                name="one_waiting_request_per_agent_and_resource",
            ),
            models.CheckConstraint(condition=Q(ttl__gte=1), name="lockrequest_ttl_positive"),
            models.CheckConstraint(
                condition=Q(status="waiting", resolved_at__isnull=True)
                | ~Q(status="waiting") & Q(resolved_at__isnull=False),
                name="lockrequest_resolution_consistent",
            ),
            models.CheckConstraint(
                condition=~Q(status="granted") | Q(lock__isnull=False),
                name="lockrequest_granted_has_lock",
            ),
        ]
        indexes = [
            models.Index(
                fields=["resource", "id"],
                condition=Q(status="waiting"),
                name="lockrequest_waiting_queue",
            ),
            models.Index(
                fields=["agent"], condition=Q(status="waiting"), name="lockrequest_waiting_agent"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mode} request #{self.pk} on {self.resource_id} by {self.agent_id}"


class LockSet(models.Model):
    """Several resources locked all or nothing (core/lock_sets.py).

    Its locks are taken one by one in ascending resource id, the one global order
    of every lock set, so lock-set users cannot deadlock among themselves. While
    it waits the set holds a prefix of its resources and has one waiting
    LockRequest, on the first resource it does not hold; it is ``granted`` once
    it holds them all. Cancelled or aborted (a deadlock victim), it releases what
    it held.
    """

    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="lock_sets")
    resources = models.ManyToManyField(Resource, related_name="lock_sets")
    mode = models.CharField(max_length=16, choices=LockMode.choices)
    ttl = models.PositiveIntegerField(help_text="Lease seconds of each lock.")
    status = models.CharField(
        max_length=16, choices=RequestStatus.choices, default=RequestStatus.WAITING
    )
    step = models.ForeignKey(
        Step, on_delete=models.SET_NULL, null=True, blank=True, related_name="lock_sets"
    )
    reason = models.TextField(blank=True)
    requested_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["requested_at", "pk"]
        constraints = [
            models.CheckConstraint(condition=Q(ttl__gte=1), name="lockset_ttl_positive"),
            models.CheckConstraint(
                condition=Q(status="waiting", resolved_at__isnull=True)
                | ~Q(status="waiting") & Q(resolved_at__isnull=False),
                name="lockset_resolution_consistent",
            ),
        ]
        indexes = [
            models.Index(
                fields=["agent"], condition=Q(status="waiting"), name="lockset_waiting_agent"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.mode} lock set #{self.pk} by {self.agent_id}"


class ConflictKind(models.TextChoices):
    WRITE_CONFLICT = "write_conflict", "Write conflict (stale version)"
    STALE_FENCE = "stale_fence", "Stale fencing token"
    DEADLOCK = "deadlock", "Deadlock"
    LEASE_LOST = "lease_lost", "Lease lost"


class ConflictStatus(models.TextChoices):
    OPEN = "open", "Open"
    RESOLVED = "resolved", "Resolved"


class Conflict(models.Model):
    kind = models.CharField(max_length=16, choices=ConflictKind.choices)
    status = models.CharField(
        max_length=16, choices=ConflictStatus.choices, default=ConflictStatus.OPEN
    )
    team = models.ForeignKey(
        Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="conflicts"
    )
    agents = models.ManyToManyField(Agent, blank=True, related_name="conflicts")
    resources = models.ManyToManyField(Resource, blank=True, related_name="conflicts")
    # Identifies the situation (for a deadlock, its cycle) so that it is open only once.
    key = models.CharField(max_length=500, blank=True)
    detail = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    resolution = models.TextField(blank=True)
    # How many times it happened: a refusal repeated by the same agent on the same
    # resource soon after counts here instead of adding a row (core/conflicts.py).
    occurrences = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "key"],
                condition=Q(status="open") & ~Q(key=""),
                name="one_open_conflict_per_key",
            ),
            models.CheckConstraint(
                condition=Q(status="open", resolved_at__isnull=True)
                | Q(status="resolved", resolved_at__isnull=False),
                name="conflict_resolution_consistent",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "kind"], name="conflict_status_kind"),
            models.Index(fields=["team", "status"], name="conflict_team_status"),
            # The last refusal of a kind in one situation (conflicts.conflict_open).
            models.Index(
                fields=["kind", "key", "created_at"],
                condition=Q(status="resolved") & ~Q(key=""),
                name="conflict_refusal_repeats",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} conflict #{self.pk}"


class ApprovalStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    FAILED = "failed", "Could not be applied"


class ApprovalReason(models.TextChoices):
    REQUIRES_APPROVAL = "requires_approval", "The resource requires approval"
    VERSION_CONFLICT = "version_conflict", "Contested write (stale version)"
    REQUESTED = "requested", "Requested by the agent"


class DeadlineOutcome(models.TextChoices):
    REJECT = "reject", "Reject (fail closed)"
    APPROVE = "approve", "Approve"
    ESCALATE = "escalate", "Escalate: notify a second group and extend the deadline once"


class ApprovalPolicy(models.Model):
    """How a team's approvals are decided when nobody is watching (core/policies.py).

    A team's policy (no resource, no prefix) applies to all its resources; one for a
    resource, or for a name prefix, overrides it there. The most specific one wins:
    the resource's, then the longest matching prefix, then the team's. An approval
    takes its policy's terms when it is opened, so editing a policy changes only the
    approvals opened after.
    """

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="approval_policies")
    resource = models.ForeignKey(
        Resource,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="approval_policies",
        help_text="One resource of the team; leave empty for a prefix or the whole team.",
    )
    prefix = models.CharField(
        max_length=NAME_MAX_LENGTH,
        blank=True,
        help_text="Without a resource: the team's resources whose name starts with this "
        "(empty, with no resource: every resource of the team).",
    )
    deadline_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds an approval may wait for a decision; empty: no deadline.",
    )
    on_deadline = models.CharField(
        max_length=16, choices=DeadlineOutcome.choices, default=DeadlineOutcome.REJECT
    )
    escalate_to = models.ForeignKey(
        "auth.Group",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
        help_text="Escalation: the second group told when the deadline passes.",
    )
    escalation_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Escalation: the seconds the deadline is extended by, once (empty: the "
        "deadline again). When the extension runs out too, the approval is rejected.",
    )
    required_approvals = models.PositiveSmallIntegerField(
        default=1,
        help_text="Approvals by distinct operators needed to apply the write (2: the "
        "two-person rule). One rejection rejects.",
    )
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "approval policies"
        ordering = ["team__name", "prefix", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(resource__isnull=True) | Q(prefix=""),
                name="policy_resource_or_prefix",
            ),
            models.UniqueConstraint(
                fields=["team", "prefix"],
                condition=Q(resource__isnull=True),
                name="policy_unique_prefix",
            ),
            models.UniqueConstraint(fields=["resource"], name="policy_unique_resource"),
            models.CheckConstraint(
                condition=Q(required_approvals__gte=1) & Q(required_approvals__lte=10),
                name="policy_required_approvals_range",
            ),
            models.CheckConstraint(
                condition=Q(deadline_seconds__isnull=True) | Q(deadline_seconds__gte=1),
                name="policy_deadline_positive",
            ),
            models.CheckConstraint(
                condition=~Q(on_deadline="escalate") | Q(deadline_seconds__isnull=False),
                name="policy_escalate_needs_deadline",
            ),
        ]

    def __str__(self) -> str:
        where = self.resource.name if self.resource_id else f"{self.prefix}*"
        if not self.resource_id and not self.prefix:
            where = "all its resources"
        return f"{self.team}: {where}"

    def clean(self) -> None:
        if self.resource_id and self.team_id and self.resource.team_id != self.team_id:
            raise ValidationError({"resource": "The resource must belong to the team."})
        if self.resource_id and self.prefix:
            raise ValidationError("Give a resource or a prefix, not both.")
        if self.on_deadline == DeadlineOutcome.ESCALATE:
            if self.deadline_seconds is None:
                raise ValidationError({"deadline_seconds": "Escalation needs a deadline."})
            if self.escalate_to_id is None:
                raise ValidationError({"escalate_to": "Escalation needs a group to tell."})


class RuleAction(models.TextChoices):
    APPROVE = "approve", "Always approve"
    REJECT = "reject", "Always reject"


class StandingRule(models.Model):
    """A decision taken in advance: approve, or reject, the writes that match (by one
    agent of the team, or any, to one resource or a name prefix) until a date or for a
    number of uses. Each use is an Event naming the rule (core/policies.py)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="standing_rules")
    action = models.CharField(max_length=16, choices=RuleAction.choices)
    agent = models.ForeignKey(
        Agent,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="standing_rules",
        help_text="The agent whose writes it decides; empty: any agent of the team.",
    )
    resource = models.ForeignKey(
        Resource,
        on_delete=models.CASCADE,
        null=True,
        blank=True,
        related_name="standing_rules",
        help_text="One resource; leave empty for a prefix.",
    )
    prefix = models.CharField(
        max_length=NAME_MAX_LENGTH,
        blank=True,
        help_text="Without a resource: the resources whose name starts with this.",
    )
    expires_at = models.DateTimeField(null=True, blank=True, help_text="Until; empty: no end.")
    max_uses = models.PositiveIntegerField(
        null=True, blank=True, help_text="For this many writes; empty: no limit."
    )
    uses = models.PositiveIntegerField(default=0, editable=False)
    active = models.BooleanField(default=True)
    reason = models.TextField(blank=True, help_text="Told to the agent whose write it decides.")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    from_approval = models.ForeignKey(
        "Approval", on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["team", "active"], name="rule_team_active")]
        constraints = [
            models.CheckConstraint(
                condition=Q(resource__isnull=False) | ~Q(prefix=""),
                name="rule_resource_or_prefix_given",
            ),
            models.CheckConstraint(
                condition=Q(resource__isnull=True) | Q(prefix=""),
                name="rule_resource_or_prefix",
            ),
            models.CheckConstraint(
                condition=Q(max_uses__isnull=True) | Q(uses__lte=F("max_uses")),
                name="rule_uses_within_max",
            ),
        ]

    def __str__(self) -> str:
        who = self.agent.name if self.agent_id else "any agent"
        where = self.resource.name if self.resource_id else f"{self.prefix}*"
        return f"rule #{self.pk}: {self.get_action_display().lower()} {who} on {where}"

    def clean(self) -> None:
        if self.resource_id and self.prefix:
            raise ValidationError("Give a resource or a prefix, not both.")
        if not self.resource_id and not self.prefix:
            raise ValidationError("Give a resource or a prefix.")
        if self.team_id:
            if self.resource_id and self.resource.team_id != self.team_id:
                raise ValidationError({"resource": "The resource must belong to the team."})
            if self.agent_id and self.agent.team_id != self.team_id:
                raise ValidationError({"agent": "The agent must belong to the team."})


class Approval(models.Model):
    resource = models.ForeignKey(Resource, on_delete=models.CASCADE, related_name="approvals")
    agent = models.ForeignKey(Agent, on_delete=models.CASCADE, related_name="approvals")
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, related_name="approvals")
    step = models.ForeignKey(
        Step, on_delete=models.SET_NULL, null=True, blank=True, related_name="approvals"
    )
    conflict = models.ForeignKey(
        Conflict, on_delete=models.SET_NULL, null=True, blank=True, related_name="approvals"
    )
    reason = models.CharField(max_length=32, choices=ApprovalReason.choices)
    status = models.CharField(
        max_length=16, choices=ApprovalStatus.choices, default=ApprovalStatus.PENDING
    )
    base_version = models.BigIntegerField(null=True, blank=True)
    base_value = models.JSONField(null=True, blank=True)
    current_version = models.BigIntegerField()
    current_value = models.JSONField(null=True, blank=True)
    proposed_value = models.JSONField(null=True, blank=True)
    fence = models.BigIntegerField(null=True, blank=True)
    note = models.TextField(blank=True, help_text="What the agent said about this write.")
    applied_value = models.JSONField(null=True, blank=True)
    applied_version = models.BigIntegerField(null=True, blank=True)
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True)
    # The policy's terms, taken when the approval is opened (core/policies.py).
    policy = models.ForeignKey(
        ApprovalPolicy, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    required_approvals = models.PositiveSmallIntegerField(default=1)
    deadline_at = models.DateTimeField(null=True, blank=True)
    on_deadline = models.CharField(
        max_length=16, choices=DeadlineOutcome.choices, default=DeadlineOutcome.REJECT
    )
    escalated_at = models.DateTimeField(null=True, blank=True)
    # The operator whose action caused the write (who started the agent's run): under a
    # two-person rule, their approval does not count.
    caused_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    decided_by_rule = models.ForeignKey(
        StandingRule, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status="pending", decided_at__isnull=True)
                | ~Q(status="pending") & Q(decided_at__isnull=False),
                name="approval_decision_consistent",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "team"], name="approval_status_team"),
            # The monitor's deadline sweep.
            models.Index(
                fields=["deadline_at"],
                condition=Q(status="pending", deadline_at__isnull=False),
                name="approval_pending_deadline",
            ),
        ]

    def __str__(self) -> str:
        return f"approval #{self.pk} on {self.resource_id}"


class ApprovalVote(models.Model):
    """One operator's decision on an approval that needs several (the two-person rule).
    One per operator and approval: a second click by the same person changes nothing."""

    approval = models.ForeignKey(Approval, on_delete=models.CASCADE, related_name="votes")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    decision = models.CharField(max_length=16, choices=RuleAction.choices)
    # The value approved: the agent's proposal, or the operator's edit of it. Approvals
    # count toward the rule only for the value that would be applied (the last edit's).
    value = models.JSONField(null=True, blank=True)
    edited = models.BooleanField(default=False)
    counted = models.BooleanField(
        default=True, help_text="False for the operator who caused the write."
    )
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["approval", "user"], name="vote_one_per_operator"),
        ]

    def __str__(self) -> str:
        return f"{self.user} {self.decision} approval #{self.approval_id}"


class Event(models.Model):
    """Append-only log. Ids are strictly increasing in commit order (see events.py)."""

    id = models.BigAutoField(primary_key=True)
    kind = models.CharField(max_length=64)
    actor = models.CharField(max_length=NAME_MAX_LENGTH + 16, help_text="agent:NAME, user:NAME…")
    # No index of its own: event_team_id (team, id) serves it.
    team = models.ForeignKey(
        Team,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="events",
        db_index=False,
    )
    agent = models.ForeignKey(
        Agent, on_delete=models.SET_NULL, null=True, blank=True, related_name="events"
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    subject_type = models.CharField(max_length=32, blank=True)
    subject_id = models.BigIntegerField(null=True, blank=True)
    payload = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["team", "id"], name="event_team_id"),
            models.Index(fields=["subject_type", "subject_id", "id"], name="event_subject"),
            models.Index(fields=["kind", "id"], name="event_kind_id"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind}"


class Switchboard(models.Model):
    """System-wide controls: one row (pk=1). ``paused`` stops every agent at its next step."""

    paused = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(id=1), name="switchboard_single_row")]

    def __str__(self) -> str:
        return "switchboard"


# --- Notifications (core/notifications.py, core/deliveries.py, docs/notifications.md) ---


class IncidentKind(models.TextChoices):
    APPROVAL_WAITING = "approval_waiting", "An approval waits for a decision"
    APPROVAL_ESCALATED = "approval_escalated", "An approval was escalated (its deadline passed)"
    DEADLOCK = "deadlock", "A deadlock waits for an operator to choose the victim"
    STALE_FENCE = "stale_fence", "A write with a stale fencing token was refused"
    RUN_FAILED = "run_failed", "A run failed"
    AGENT_PAUSED = "agent_paused", "An agent was paused by policy"


class Audience(models.TextChoices):
    OPERATORS = "operators", "The team's operators: every incident but escalations"
    ESCALATION = "escalation", "The second group: escalations only"
    ALL = "all", "Both: every incident"


class Webhook(models.Model):
    """A URL told about a team's incidents: a JSON POST signed with HMAC-SHA256 over
    ``"{timestamp}.{body}"`` with ``secret`` (core/deliveries.py; docs/notifications.md)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(
        max_length=500,
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="http:// or https://. Redirects are not followed.",
    )
    # Kept as it is: signing needs it. Generated, shown once when the webhook is created
    # or its secret rotated, and masked afterwards (core/admin.py).
    secret = models.CharField(max_length=100, editable=False)
    kinds = models.JSONField(
        default=list, blank=True, help_text="The incident kinds it is told; empty: all of them."
    )
    audience = models.CharField(max_length=16, choices=Audience.choices, default=Audience.OPERATORS)
    active = models.BooleanField(default=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["team__name", "pk"]

    def __str__(self) -> str:
        return f"{self.team}: {self.url}"

    def clean(self) -> None:
        if not isinstance(self.kinds, list):
            raise ValidationError({"kinds": "A list of incident kinds."})
        unknown = sorted(set(map(str, self.kinds)) - set(IncidentKind.values))
        if unknown:
            raise ValidationError({"kinds": f"Unknown incident kind(s): {', '.join(unknown)}"})

    def wants(self, kind: str) -> bool:
        """Whether an incident of ``kind`` goes to this webhook (its audience and kinds)."""
        escalation = kind == IncidentKind.APPROVAL_ESCALATED
        audience = Audience.ESCALATION if escalation else Audience.OPERATORS
        return self.audience in (audience, Audience.ALL) and (not self.kinds or kind in self.kinds)


class Incident(models.Model):
    """Something an operator should be told about, once: one row per (kind, key)
    however many events or sweeps report it (core/notifications.py)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="incidents")
    kind = models.CharField(max_length=32, choices=IncidentKind.choices)
    # What makes it one thing: "approval:12", "conflict:7", "run:3", ...
    key = models.CharField(max_length=200)
    event_kind = models.CharField(max_length=64, help_text="The event that opened it.")
    subject_type = models.CharField(max_length=32, blank=True)
    subject_id = models.BigIntegerField(null=True, blank=True)
    title = models.CharField(max_length=300)
    detail = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["kind", "key"], name="incident_once_per_key"),
        ]
        indexes = [models.Index(fields=["team", "created_at"], name="incident_team_created")]

    def __str__(self) -> str:
        return f"incident #{self.pk}: {self.title}"


class DeliveryChannel(models.TextChoices):
    WEBHOOK = "webhook", "Webhook"
    EMAIL = "email", "E-mail"


class DeliveryOutcome(models.TextChoices):
    DELIVERED = "delivered", "Delivered"
    RETRYING = "retrying", "Failed; another attempt is scheduled"
    FAILED = "failed", "Failed; given up"
    SKIPPED = "skipped", "Skipped (no longer waiting, or nobody to tell)"


class Delivery(models.Model):
    """One attempt to tell one target about an incident. Append-only: a retry is a new
    row, so the history shows each attempt's status code."""

    incident = models.ForeignKey(Incident, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=16, choices=DeliveryChannel.choices)
    webhook = models.ForeignKey(
        Webhook, on_delete=models.SET_NULL, null=True, blank=True, related_name="deliveries"
    )
    recipients = models.TextField(blank=True, help_text="The URL, or the e-mail addresses.")
    attempt = models.PositiveSmallIntegerField()
    outcome = models.CharField(max_length=16, choices=DeliveryOutcome.choices)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_excerpt = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    next_retry_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["incident", "channel"], name="delivery_incident")]

    def __str__(self) -> str:
        return f"{self.channel} attempt {self.attempt} of incident #{self.incident_id}"

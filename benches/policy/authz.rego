# A SARK-like authorization policy: may this user invoke this tool? The benchmark's workload
# (benches/py/bench_policy.py); written the way the VM can run it (no built-in calls).
package sark.authz

default allow := false

# Administrators may do anything.
allow if input.user.role == "admin"

# Everyone else: an active user whose role reaches the resource's sensitivity, on a team that owns
# the resource (or the resource is public), inside the owning team's working hours.
allow if {
	not input.user.disabled
	role_permits
	team_permits
	within_hours
}

role_permits if data.roles[input.user.role].level >= data.sensitivity[input.resource.sensitivity].min_level

team_permits if input.resource.owner_team in input.user.teams

team_permits if input.resource.sensitivity == "public"

within_hours if {
	window := data.hours[input.resource.owner_team]
	input.context.hour >= window.start
	input.context.hour < window.end
}

# Why a request is refused (for the audit log).
reasons contains "user disabled" if input.user.disabled

reasons contains "role too low" if not role_permits

reasons contains "not on the owning team" if not team_permits

reasons contains "outside working hours" if not within_hours

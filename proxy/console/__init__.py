"""The console and the admin API: where people govern what the request path decides with (credentials, activity,
access), off the request path. `service` holds what both share, `credentials`/`activity`/`access` the operations,
`api` their JSON face, `pages` their HTML face. May import identity, policy, ops and the base; the edge imports it
(to add its routes and attach it), never the request path."""

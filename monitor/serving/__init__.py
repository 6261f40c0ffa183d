"""What other tools read or receive from a run: Prometheus, Grafana, Alertmanager, a webhook.

``exporter`` (the scrape target, served from the driver), ``grafana`` (dashboards and kill
annotations), ``webhook`` (a kill posted to a chat), and the local servers of ``make
prometheus`` (``prometheus_local``) and ``make alertmanager`` (``alertmanager_local``).

Imports only the shared modules of ``monitor`` (and ``dashboards``): the driver uses these,
never the other way.
"""

"""Generates the chart's Grafana dashboard from the panel list:

    python3 ci/dashboard/generate.py ci/dashboard/panels.json charts/wsgate/dashboards/wsgate.json

tests/dashboard.rs checks that every metric it queries is one wsgate exports."""
import json, sys

SEL = 'route=~"$route"'
panels = []
y = 0
pid = 0

def row(title):
    global y, pid
    pid += 1
    panels.append({"type": "row", "title": title, "id": pid, "collapsed": False,
                   "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
    y += 1

def ts(title, targets, unit="short", w=12, desc="", stack=False):
    global y, pid
    pid += 1
    x = 0 if not panels or panels[-1]["type"] == "row" or panels[-1]["gridPos"]["x"] + panels[-1]["gridPos"]["w"] + w > 24 else panels[-1]["gridPos"]["x"] + panels[-1]["gridPos"]["w"]
    if x == 0 and panels and panels[-1]["type"] != "row":
        y += 8
    panels.append({
        "type": "timeseries", "title": title, "id": pid, "description": desc,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": w, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, "custom": {"stacking": {"mode": "normal" if stack else "none"}, "fillOpacity": 10}}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull", "max"]}, "tooltip": {"mode": "multi", "sort": "desc"}},
        "targets": [{"datasource": {"type": "prometheus", "uid": "${datasource}"}, "expr": e, "legendFormat": l, "refId": chr(65 + i)} for i, (e, l) in enumerate(targets)],
    })

def finish_row():
    global y
    if panels and panels[-1]["type"] != "row":
        y += 8

SPEC = json.load(open(sys.argv[1]))
for r in SPEC:
    finish_row()
    row(r["row"])
    for p in r["panels"]:
        ts(p["title"], [(t[0].replace("$SEL", SEL), t[1]) for t in p["targets"]], p.get("unit", "short"), p.get("w", 12), p.get("desc", ""), p.get("stack", False))

dash = {
    "title": "wsgate", "uid": "wsgate-overview", "tags": ["wsgate", "websocket", "ingress"],
    "timezone": "", "schemaVersion": 39, "version": 1, "editable": True, "refresh": "30s",
    "time": {"from": "now-3h", "to": "now"}, "graphTooltip": 1,
    "description": "wsgate: connections, handshakes, refusals, closes by code, messages and bytes, drains and skew. Metrics: docs/operations.md.",
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source", "current": {}, "hide": 0},
        {"name": "route", "type": "query", "label": "Route", "datasource": {"type": "prometheus", "uid": "${datasource}"},
         "query": {"query": "label_values(wsgate_connections_total, route)", "refId": "route"},
         "definition": "label_values(wsgate_connections_total, route)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1, "current": {}, "hide": 0},
    ]},
    "annotations": {"list": []},
    "panels": panels,
}
json.dump(dash, open(sys.argv[2], "w"), indent=2)
open(sys.argv[2], "a").write("\n")

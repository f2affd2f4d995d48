#!/usr/bin/env python3
"""Superset provisioning for campaign-pipeline, run by scripts/superset.sh with the Superset venv's python.

  provision [--out FILE] [--lookback-hours N]
                             database "Campaign pipeline" (CAMPAIGN_SQL_URI), one virtual dataset over
                             campaigns.campaign_metrics, five charts (Totals, CTR % per campaign, CVR % per
                             campaign, Revenue per campaign, Top campaigns by revenue) and the dashboard
                             "Campaign performance" (slug campaign-performance) with a native filter on
                             campaign_id over all of them; idempotent (found by name, the dashboard by slug,
                             and updated); charts on the dataset that earlier runs made and CHARTS no longer
                             has are deleted
  chart-data NAME_OR_ID      the chart's data from /api/v1/chart/{id}/data/ (its saved query_context) as JSON
             [--rows]        only the rows of the first query, normalized (see normalize_rows / superset.sh)
             [--cached]      allow Superset's cache (default: force=true, the rows come from the endpoint)
             [--type query]  the generated SQL instead of the rows
  screenshot [--out PNG] [--campaign ID]...
                             log in through /login/, open the dashboard in headless Chromium (selenium,
                             a Superset dependency, with Debian's chromium + chromedriver), wait for every
                             chart, optionally apply the campaign filter, save a PNG, print one JSON object
                             (the charts seen and their state, the Totals row); exit 1 on a chart error
  load [--users N] [--rounds R] [--cached] [--out JSON]
                             N users (own logged-in sessions) view the dashboard at once, R times; prints
                             markdown tables of view and chart-data times for 1 and N users
  admin                      create or update the admin user from SUPERSET_ADMIN_USER / SUPERSET_ADMIN_PASSWORD
                             (needs SUPERSET_CONFIG_PATH; run by `superset.sh start`)

Only plain SELECTs are sent to the SQL endpoint by what this file sets up: the dataset is virtual (its
SQL is given, its columns and types are declared here, never read from the endpoint's catalog) and the
metrics are SQL aggregates over the rows, so a percentage is computed from sums, never averaged.

Environment: SUPERSET_URL (default http://127.0.0.1:8088), SUPERSET_ADMIN_USER, SUPERSET_ADMIN_PASSWORD,
CAMPAIGN_SQL_URI (provision), CAMPAIGN_SQL_SCHEMA (default campaigns), SUPERSET_HOME (default out folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

DATABASE_NAME = "Campaign pipeline"
DATASET_NAME = "campaign_metrics_virtual"
DASHBOARD_TITLE = "Campaign performance"
DASHBOARD_SLUG = "campaign-performance"
TIME_GRAIN = "PT1M"  # one minute, the pipeline's window
TIME_COL = "window_start"
NATIVE_FILTER_ID = "NATIVE_FILTER-campaign-id"
TIME_FILTER_ID = "NATIVE_FILTER-time-range"
TIMESERIES_ROW_LIMIT = 50000  # 10 campaigns x 5,000 one-minute windows (ROW_LIMIT in superset_config.py)

# The dataset's columns, declared (the endpoint's catalog is never asked).
COLUMNS = [
    # name, type, is_dttm, verbose name
    ("campaign_id", "VARCHAR", False, "Campaign"),
    ("window_start", "TIMESTAMP WITH TIME ZONE", True, "Window start"),
    ("impressions", "BIGINT", False, "Impressions"),
    ("clicks", "BIGINT", False, "Clicks"),
    ("conversions", "BIGINT", False, "Conversions"),
    ("revenue", "DOUBLE PRECISION", False, "Revenue"),
]

# The dataset's metrics: aggregates over the rows. Percentages are ratios of sums.
METRICS = [
    # name, verbose name, SQL expression, d3 format
    ("total_impressions", "Impressions", "SUM(impressions)", ",d"),
    ("total_clicks", "Clicks", "SUM(clicks)", ",d"),
    ("total_conversions", "Conversions", "SUM(conversions)", ",d"),
    ("total_revenue", "Revenue", "SUM(revenue)", ",.2f"),
    ("ctr_pct", "CTR %", "100.0 * SUM(clicks) / NULLIF(SUM(impressions), 0)", ",.2f"),
    ("cvr_pct", "CVR %", "100.0 * SUM(conversions) / NULLIF(SUM(clicks), 0)", ",.2f"),
]

# The charts: (name, kind, metrics). kind: totals = one table row of every total (one query instead
# of one per number: each chart is one /api/v1/chart/data request per viewer), line = per campaign
# over time, bar = top campaigns.
CHARTS = [
    ("Totals", "totals", [m[0] for m in METRICS]),
    ("CTR % per campaign", "line", ["ctr_pct"]),
    ("CVR % per campaign", "line", ["cvr_pct"]),
    ("Revenue per campaign", "line", ["total_revenue"]),
    ("Top campaigns by revenue", "bar", ["total_revenue"]),
]

# Charts on DATASET_NAME that earlier versions of this file created and that are no longer in CHARTS:
# provisioning deletes them, and any other chart on the dataset whose description starts with
# CHART_MARKER that it did not just create or update (e.g. a duplicate of a name in CHARTS), so
# re-provisioning an existing Superset leaves exactly CHARTS on the dashboard. Charts people made on the
# dataset themselves stay (off the dashboard: its layout is rewritten).
RETIRED_CHARTS = ("Impressions", "Clicks", "Conversions", "Revenue", "CTR %", "CVR %")
CHART_MARKER = "Provisioned by campaign-pipeline's scripts/superset.sh"

# Dashboard rows: (height in grid units of 8 px, [(chart name, width of 12)]).
LAYOUT = [
    (20, [("Totals", 12)]),
    (60, [("CTR % per campaign", 6), ("CVR % per campaign", 6)]),
    (60, [("Revenue per campaign", 7), ("Top campaigns by revenue", 5)]),
]


def dataset_sql(schema: str) -> str:
    cols = ", ".join(name for name, *_ in COLUMNS)
    return f"SELECT {cols} FROM {schema}.campaign_metrics"


def env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name) or default
    if not value:
        sys.exit(f"superset_provision.py: {name} is not set")
    return value


# ---------------------------------------------------------------- REST client


class ApiError(RuntimeError):
    pass


class Superset:
    """The REST API with a logged-in session: JWT from /api/v1/security/login, CSRF token with the session cookie."""

    def __init__(self, base_url: str, user: str, password: str):
        import requests

        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        for _ in range(10):  # Superset limits logins (AUTH_RATE_LIMIT, 5 per second): wait, again
            r = self.http.post(
                f"{self.base}/api/v1/security/login",
                json={"username": user, "password": password, "provider": "db", "refresh": False},
                timeout=60,
            )
            if r.status_code != 429:
                break
            time.sleep(1)
        if r.status_code != 200:
            raise ApiError(f"login as {user!r} at {self.base} failed: HTTP {r.status_code} {r.text[:300]}")
        self.http.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        r = self.http.get(f"{self.base}/api/v1/security/csrf_token/", timeout=60)
        if r.status_code != 200:
            raise ApiError(f"CSRF token: HTTP {r.status_code} {r.text[:300]}")
        self.http.headers["X-CSRFToken"] = r.json()["result"]
        self.http.headers["Referer"] = self.base + "/"

    def call(self, method: str, path: str, ok=(200, 201), **kw):
        r = self.http.request(method, f"{self.base}{path}", timeout=300, **kw)
        if r.status_code not in ok:
            raise ApiError(f"{method} {path}: HTTP {r.status_code} {r.text[:2000]}")
        return r.json() if r.content else {}

    def find(self, resource: str, column: str, value: str) -> list[dict]:
        """Objects whose `column` equals `value` exactly (searched with `ct`, compared here)."""
        import prison

        q = prison.dumps({"filters": [{"col": column, "opr": "ct", "value": value}], "page_size": 100})
        rows = self.call("GET", f"/api/v1/{resource}/", params={"q": q})["result"]
        return [row for row in rows if row.get(column) == value]

    def me(self) -> int:
        return self.call("GET", "/api/v1/me/")["result"]["id"]


# ---------------------------------------------------------------- provisioning


def ensure_database(api: Superset, uri: str) -> int:
    payload = {
        "database_name": DATABASE_NAME,
        "sqlalchemy_uri": uri,
        "expose_in_sqllab": True,
        "allow_run_async": False,
        "allow_dml": False,
        "allow_ctas": False,
        "allow_cvas": False,
        "allow_file_upload": False,
        "impersonate_user": False,
        "extra": json.dumps(
            {
                "allows_virtual_table_explore": True,
                "metadata_params": {},
                # no hstore probe (a pg_type/pg_namespace join) on every new connection; the
                # connections show up as "superset" in the endpoint's logs
                "engine_params": {
                    "use_native_hstore": False,
                    "connect_args": {"application_name": "superset"},
                },
                "schemas_allowed_for_file_upload": [],
            }
        ),
    }
    found = api.find("database", "database_name", DATABASE_NAME)
    if found:
        db_id = found[0]["id"]
        api.call("PUT", f"/api/v1/database/{db_id}", json=payload)
        print(f"database {DATABASE_NAME!r}: updated (id {db_id})", file=sys.stderr)
    else:
        db_id = api.call("POST", "/api/v1/database/", json=payload)["id"]
        print(f"database {DATABASE_NAME!r}: created (id {db_id})", file=sys.stderr)
    return db_id


def ensure_dataset(api: Superset, db_id: int, schema: str, owner: int) -> int:
    sql = dataset_sql(schema)
    found = [d for d in api.find("dataset", "table_name", DATASET_NAME) if d["database"]["id"] == db_id]
    if found:
        ds_id = found[0]["id"]
        print(f"dataset {DATASET_NAME!r}: updating (id {ds_id})", file=sys.stderr)
    else:
        ds_id = api.call(
            "POST",
            "/api/v1/dataset/",
            json={"database": db_id, "table_name": DATASET_NAME, "sql": sql, "owners": [owner]},
        )["id"]
        print(f"dataset {DATASET_NAME!r}: created (id {ds_id})", file=sys.stderr)
    current = api.call("GET", f"/api/v1/dataset/{ds_id}")["result"]
    metric_ids = {m["metric_name"]: m["id"] for m in current.get("metrics", [])}
    metrics = []
    for name, verbose, expression, d3format in METRICS:
        m = {
            "metric_name": name,
            "verbose_name": verbose,
            "expression": expression,
            "metric_type": None,
            "d3format": d3format,
        }
        if name in metric_ids:
            m["id"] = metric_ids[name]
        metrics.append(m)
    columns = [
        {
            "column_name": name,
            "type": type_,
            "is_dttm": is_dttm,
            "verbose_name": verbose,
            "groupby": True,
            "filterable": True,
            "is_active": True,
        }
        for name, type_, is_dttm, verbose in COLUMNS
    ]
    api.call(
        "PUT",
        f"/api/v1/dataset/{ds_id}",
        params={"override_columns": "true"},
        json={
            "sql": sql,
            "description": "campaign_metrics: one row per campaign and one-minute window",
            "main_dttm_col": TIME_COL,
            "filter_select_enabled": True,
            "normalize_columns": False,
            "always_filter_main_dttm": False,
            "columns": columns,
            "metrics": metrics,
            "owners": [owner],
        },
    )
    return ds_id


def lookback_where(hours: int) -> str:
    """The time series' optional window: plain SQL (NOW() and an interval literal), no TO_TIMESTAMP."""
    return f"{TIME_COL} >= NOW() - INTERVAL '{int(hours)} hours'"


def time_range_filter() -> dict:
    return {"clause": "WHERE", "comparator": "No filter", "expressionType": "SIMPLE", "operator": "TEMPORAL_RANGE", "subject": TIME_COL}


def chart_definition(kind: str, metrics: list[str], ds_id: int, lookback_hours: int = 0) -> tuple[str, dict, dict]:
    """(viz_type, form_data, the query object saved in query_context).

    The saved query returns long rows (one per time/campaign) without the front end's post-processing
    (pivot), so /api/v1/chart/{id}/data/ answers rows that tests can compare with SQL on the tables.
    The dashboard's front end builds its own query from form_data: same metrics, grouping and filters."""
    base_form = {
        "datasource": f"{ds_id}__table",
        "adhoc_filters": [time_range_filter()],
        "extra_form_data": {},
        "dashboards": [],
    }
    base_query = {
        "filters": [{"col": TIME_COL, "op": "TEMPORAL_RANGE", "val": "No filter"}],
        "extras": {"having": "", "where": ""},
        "applied_time_extras": {},
        "columns": [],
        "metrics": list(metrics),
        "orderby": [],
        "annotation_layers": [],
        "series_limit": 0,
        "order_desc": True,
        "url_params": {},
        "custom_params": {},
        "custom_form_data": {},
        "time_offsets": [],
        "post_processing": [],
    }
    metric = metrics[0]
    if kind == "totals":
        # A table in aggregate mode without grouping: one row, one column per metric (headers are the
        # metrics' verbose names, numbers in their d3 formats). No totals row, no pagination, no search:
        # the front end sends exactly one query for it.
        d3formats = {m[0]: m[3] for m in METRICS}
        form = {
            **base_form,
            "viz_type": "table",
            "query_mode": "aggregate",
            "groupby": [],
            "metrics": list(metrics),
            "all_columns": [],
            "percent_metrics": [],
            "order_by_cols": [],
            "timeseries_limit_metric": None,
            "row_limit": 10,
            "server_page_length": 10,
            "server_pagination": False,
            "order_desc": True,
            "table_timestamp_format": "smart_date",
            "show_totals": False,
            "show_cell_bars": False,
            "color_pn": False,
            "include_search": False,
            "allow_rearrange_columns": False,
            "allow_render_html": False,
            "conditional_formatting": [],
            "column_config": {m: {"d3NumberFormat": d3formats[m], "showCellBars": False} for m in metrics},
        }
        # as the table's front end asks: ordered by the first metric (one row either way)
        return "table", form, {**base_query, "orderby": [[metric, False]], "row_limit": 10}
    if kind == "line":
        form = {
            **base_form,
            "viz_type": "echarts_timeseries_line",
            "x_axis": TIME_COL,
            "time_grain_sqla": TIME_GRAIN,
            "metrics": [metric],
            "groupby": ["campaign_id"],
            "row_limit": TIMESERIES_ROW_LIMIT,
            "order_desc": True,
            "truncate_metric": True,
            "show_empty_columns": True,
            "comparison_type": "values",
            "annotation_layers": [],
            "forecastPeriods": 10,
            "forecastInterval": 0.8,
            "x_axis_title_margin": 15,
            "y_axis_title_margin": 15,
            "y_axis_title_position": "Left",
            "sort_series_type": "sum",
            "color_scheme": "supersetColors",
            "seriesType": "line",
            "only_total": True,
            "opacity": 0.2,
            "markerSize": 6,
            "show_legend": True,
            "legendType": "scroll",
            "legendOrientation": "top",
            "x_axis_time_format": "smart_date",
            "rich_tooltip": True,
            "tooltipTimeFormat": "smart_date",
            "y_axis_format": ",.2f",
            "y_axis_bounds": [None, None],
            "truncateXAxis": True,
            "zoomable": True,
            "x_axis_sort_asc": True,
            "x_axis_sort_series": "name",
            "x_axis_sort_series_ascending": True,
        }
        query = {
            **base_query,
            "columns": [
                {
                    "timeGrain": TIME_GRAIN,
                    "columnType": "BASE_AXIS",
                    "sqlExpression": TIME_COL,
                    "label": TIME_COL,
                    "expressionType": "SQL",
                },
                "campaign_id",
            ],
            "series_columns": ["campaign_id"],
            "extras": {"having": "", "where": "", "time_grain_sqla": TIME_GRAIN},
            "row_limit": TIMESERIES_ROW_LIMIT,
            # as the dashboard's front end asks: the rows past the limit are the smallest values
            "orderby": [[metric, False]],
        }
        if lookback_hours:
            where = lookback_where(lookback_hours)
            form["adhoc_filters"].append({"expressionType": "SQL", "clause": "WHERE", "sqlExpression": where})
            query["extras"]["where"] = f"({where})"
        return "echarts_timeseries_line", form, query
    if kind == "bar":
        form = {
            **base_form,
            "viz_type": "echarts_timeseries_bar",
            "x_axis": "campaign_id",
            "x_axis_sort": metric,
            "x_axis_sort_asc": False,
            "metrics": [metric],
            "groupby": [],
            "row_limit": 10,
            "order_desc": True,
            "orientation": "vertical",
            "show_legend": False,
            "show_value": True,
            "color_scheme": "supersetColors",
            "y_axis_format": ",.2f",
            "truncate_metric": True,
            "comparison_type": "values",
            "annotation_layers": [],
            "x_axis_title_margin": 15,
            "y_axis_title_margin": 15,
            "y_axis_title_position": "Left",
            "rich_tooltip": True,
            "only_total": True,
            "y_axis_bounds": [None, None],
        }
        query = {**base_query, "columns": ["campaign_id"], "orderby": [[metric, False]], "row_limit": 10}
        return "echarts_timeseries_bar", form, query
    raise ValueError(kind)


def ensure_dashboard(api: Superset, owner: int) -> int:
    r = api.http.get(f"{api.base}/api/v1/dashboard/{DASHBOARD_SLUG}", timeout=60)
    if r.status_code == 200:
        dash_id = r.json()["result"]["id"]
        print(f"dashboard {DASHBOARD_SLUG!r}: updating (id {dash_id})", file=sys.stderr)
        return dash_id
    if r.status_code != 404:
        raise ApiError(f"GET dashboard {DASHBOARD_SLUG}: HTTP {r.status_code} {r.text[:300]}")
    dash_id = api.call(
        "POST",
        "/api/v1/dashboard/",
        json={"dashboard_title": DASHBOARD_TITLE, "slug": DASHBOARD_SLUG, "owners": [owner], "published": True},
    )["id"]
    print(f"dashboard {DASHBOARD_SLUG!r}: created (id {dash_id})", file=sys.stderr)
    return dash_id


def charts_on_dataset(api: Superset, ds_id: int) -> list[dict]:
    """Every chart whose datasource is the dataset ds_id (all pages of /api/v1/chart/)."""
    import prison

    out, page = [], 0
    while True:
        q = prison.dumps(
            {
                "columns": ["id", "slice_name", "datasource_id", "datasource_type", "description"],
                "filters": [{"col": "datasource_id", "opr": "eq", "value": ds_id}],
                "order_column": "slice_name",
                "order_direction": "asc",
                "page": page,
                "page_size": 100,
            }
        )
        rows = api.call("GET", "/api/v1/chart/", params={"q": q})["result"]
        out += [c for c in rows if c.get("datasource_id") == ds_id and c.get("datasource_type") == "table"]
        if len(rows) < 100:
            return out
        page += 1


def ensure_chart(
    api: Superset,
    name: str,
    kind: str,
    metrics: list[str],
    ds_id: int,
    dash_id: int,
    owner: int,
    lookback_hours: int,
    existing: list[dict],
) -> int:
    """Create or update the chart `name` on the dataset; `existing` = charts_on_dataset (the first one of
    that name is updated, later duplicates are left to delete_stale_charts)."""
    viz_type, form, query = chart_definition(kind, metrics, ds_id, lookback_hours)
    form["slice_name"] = name
    form["dashboards"] = [dash_id]
    query_context = {
        "datasource": {"id": ds_id, "type": "table"},
        "force": False,
        "queries": [query],
        "form_data": form,
        "result_format": "json",
        "result_type": "full",
    }
    payload = {
        "slice_name": name,
        "viz_type": viz_type,
        "datasource_id": ds_id,
        "datasource_type": "table",
        "params": json.dumps(form),
        "query_context": json.dumps(query_context),
        "query_context_generation": False,
        "description": f"{CHART_MARKER}; re-provisioning overwrites it.",
        "dashboards": [dash_id],
        "owners": [owner],
    }
    found = [c for c in existing if c["slice_name"] == name]
    if found:
        chart_id = found[0]["id"]
        api.call("PUT", f"/api/v1/chart/{chart_id}", json=payload)
    else:
        chart_id = api.call("POST", "/api/v1/chart/", json=payload)["id"]
    return chart_id


def delete_stale_charts(api: Superset, ds_id: int, keep: set[int]) -> list[str]:
    """Delete the charts on the dataset that provisioning made earlier and no longer wants: names in
    RETIRED_CHARTS or a description starting with CHART_MARKER (duplicates of a name in CHARTS
    included), and not kept. Charts other people made on the dataset stay."""
    deleted = []
    for c in charts_on_dataset(api, ds_id):
        if c["id"] in keep:
            continue
        if c["slice_name"] in RETIRED_CHARTS or (c.get("description") or "").startswith(CHART_MARKER):
            api.call("DELETE", f"/api/v1/chart/{c['id']}")
            deleted.append(f"{c['slice_name']} (id {c['id']})")
    return deleted


def layout(chart_ids: dict[str, int]) -> dict:
    pos: dict = {
        "DASHBOARD_VERSION_KEY": "v2",
        "ROOT_ID": {"type": "ROOT", "id": "ROOT_ID", "children": ["GRID_ID"]},
        "GRID_ID": {"type": "GRID", "id": "GRID_ID", "children": [], "parents": ["ROOT_ID"]},
        "HEADER_ID": {"type": "HEADER", "id": "HEADER_ID", "meta": {"text": DASHBOARD_TITLE}},
    }
    for i, (height, cells) in enumerate(LAYOUT, 1):
        row = f"ROW-{i}"
        pos["GRID_ID"]["children"].append(row)
        pos[row] = {
            "type": "ROW",
            "id": row,
            "children": [],
            "parents": ["ROOT_ID", "GRID_ID"],
            "meta": {"background": "BACKGROUND_TRANSPARENT"},
        }
        for name, width in cells:
            cid = chart_ids[name]
            key = f"CHART-{cid}"
            pos[row]["children"].append(key)
            pos[key] = {
                "type": "CHART",
                "id": key,
                "children": [],
                "parents": ["ROOT_ID", "GRID_ID", row],
                "meta": {"chartId": cid, "sliceName": name, "width": width, "height": height},
            }
    return pos


def native_filters(ds_id: int, chart_ids: list[int]) -> list[dict]:
    return [
        {
            # Superset's own time-range picker ("Last day", "Last week", a custom range): every
            # chart's TEMPORAL_RANGE filter on window_start takes it; "No filter" until chosen.
            "id": TIME_FILTER_ID,
            "name": "Time range",
            "type": "NATIVE_FILTER",
            "filterType": "filter_time",
            "description": "window_start, applies to every chart",
            "targets": [{}],
            "controlValues": {"enableEmptyFilter": False},
            "defaultDataMask": {"extraFormData": {}, "filterState": {}, "ownState": {}},
            "cascadeParentIds": [],
            "scope": {"rootPath": ["ROOT_ID"], "excluded": []},
            "chartsInScope": chart_ids,
            "tabsInScope": [],
        },
        {
            "id": NATIVE_FILTER_ID,
            "name": "Campaign",
            "type": "NATIVE_FILTER",
            "filterType": "filter_select",
            "description": "campaign_id, applies to every chart",
            "targets": [{"datasetId": ds_id, "column": {"name": "campaign_id"}}],
            "controlValues": {
                "enableEmptyFilter": False,
                "defaultToFirstItem": False,
                "multiSelect": True,
                "searchAllOptions": False,
                "inverseSelection": False,
            },
            "defaultDataMask": {"extraFormData": {}, "filterState": {}, "ownState": {}},
            "cascadeParentIds": [],
            "scope": {"rootPath": ["ROOT_ID"], "excluded": []},
            "chartsInScope": chart_ids,
            "tabsInScope": [],
        }
    ]


def provision(args: argparse.Namespace) -> None:
    t0 = time.monotonic()
    base = env("SUPERSET_URL", "http://127.0.0.1:8088")
    api = Superset(base, env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD"))
    owner = api.me()
    db_id = ensure_database(api, env("CAMPAIGN_SQL_URI"))
    ds_id = ensure_dataset(api, db_id, args.schema, owner)
    dash_id = ensure_dashboard(api, owner)
    chart_ids = {}
    existing = charts_on_dataset(api, ds_id)
    for name, kind, metrics in CHARTS:
        chart_ids[name] = ensure_chart(api, name, kind, metrics, ds_id, dash_id, owner, args.lookback_hours, existing)
        print(f"chart {name!r}: id {chart_ids[name]}", file=sys.stderr)
    positions = layout(chart_ids)
    ids = list(chart_ids.values())
    metadata = {
        "native_filter_configuration": native_filters(ds_id, ids),
        "chart_configuration": {},
        "global_chart_configuration": {"scope": {"rootPath": ["ROOT_ID"], "excluded": []}, "chartsInScope": ids},
        "cross_filters_enabled": False,
        "refresh_frequency": 0,
        "timed_refresh_immune_slices": [],
        "expanded_slices": {},
        "color_scheme": "",
        "label_colors": {},
        "shared_label_colors": [],
        "map_label_colors": {},
        "color_scheme_domain": [],
        "default_filters": "{}",
        "positions": positions,
    }
    api.call(
        "PUT",
        f"/api/v1/dashboard/{dash_id}",
        json={
            "dashboard_title": DASHBOARD_TITLE,
            "slug": DASHBOARD_SLUG,
            "published": True,
            "owners": [owner],
            "position_json": json.dumps(positions),
            "json_metadata": json.dumps(metadata),
        },
    )
    # the dashboard no longer shows them: delete what earlier provisioning made and CHARTS lost
    for gone in delete_stale_charts(api, ds_id, set(chart_ids.values())):
        print(f"chart {gone}: deleted (no longer provisioned)", file=sys.stderr)
    # check what Superset stored
    on_dash = {c["id"] for c in api.call("GET", f"/api/v1/dashboard/{dash_id}/charts")["result"]}
    if on_dash != set(chart_ids.values()):
        raise ApiError(f"the dashboard's charts are {sorted(on_dash)} after the update, expected {chart_ids}")
    stored = json.loads(api.call("GET", f"/api/v1/dashboard/{dash_id}")["result"]["json_metadata"])
    if [f["id"] for f in stored.get("native_filter_configuration", [])] != [TIME_FILTER_ID, NATIVE_FILTER_ID]:
        raise ApiError("the native filters on the time range and campaign_id were not stored")

    url = f"{api.base}/superset/dashboard/{DASHBOARD_SLUG}/"
    out = {
        "superset_url": api.base,
        "database_id": db_id,
        "dataset_id": ds_id,
        "dashboard": {"id": dash_id, "slug": DASHBOARD_SLUG, "title": DASHBOARD_TITLE, "url": url},
        "native_filter_id": NATIVE_FILTER_ID,
        "time_filter_id": TIME_FILTER_ID,
        "charts": chart_ids,
    }
    out_path = args.out or os.path.join(os.environ.get("SUPERSET_HOME") or ".superset", "provisioned.json")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"provisioned in {time.monotonic() - t0:.1f} s; ids in {out_path}", file=sys.stderr)
    print(url)


# ---------------------------------------------------------------- chart data


def resolve_chart(api: Superset, name_or_id: str) -> int:
    if name_or_id.isdigit():
        return int(name_or_id)
    found = api.find("chart", "slice_name", name_or_id)
    if not found:
        names = sorted(c["slice_name"] for c in api.call("GET", "/api/v1/chart/", params={"q": "(page_size:100)"})["result"])
        sys.exit(f"superset_provision.py: no chart named {name_or_id!r}; charts: {names}")
    return found[0]["id"]


# Superset's GenericDataType codes in a result's "coltypes"
TEMPORAL = 2
# columns and metrics that are sums or counts of BIGINT columns: printed as JSON integers
INTEGER_COLUMNS = {"impressions", "clicks", "conversions", "total_impressions", "total_clicks", "total_conversions"}


def iso_utc(ms: float) -> str:
    """Epoch milliseconds (Superset's JSON form of a timestamp) as `campaign-pipeline query --format json`
    prints a timestamptz: 2026-11-27T13:24:00Z (milliseconds only when not zero: ...:00.250Z)."""
    import datetime

    t = datetime.datetime.fromtimestamp(ms / 1000.0, tz=datetime.timezone.utc)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += f".{t.microsecond // 1000:03d}"
    return text + "Z"


def normalize_rows(result: dict) -> list[dict]:
    """A query result's rows in the documented form (superset.sh's header, chart-data --rows): temporal
    columns as ISO 8601 UTC strings, INTEGER_COLUMNS as integers, other numbers as they came (doubles),
    NULL (and NaN, which Superset sends as null) as null; keys and row order as Superset answered."""
    colnames = result.get("colnames") or []
    coltypes = result.get("coltypes") or []
    temporal = {n for n, t in zip(colnames, coltypes) if t == TEMPORAL}
    rows = []
    for row in result.get("data", []):
        out = {}
        for k, v in row.items():
            if k in temporal and isinstance(v, (int, float)) and not isinstance(v, bool):
                v = iso_utc(v)
            elif k in INTEGER_COLUMNS and isinstance(v, float) and v.is_integer():
                v = int(v)
            out[k] = v
        rows.append(out)
    return rows


def chart_data(args: argparse.Namespace) -> None:
    api = Superset(env("SUPERSET_URL", "http://127.0.0.1:8088"), env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD"))
    chart_id = resolve_chart(api, args.chart)
    params = {"format": "json", "type": args.type}
    if not args.cached:
        params["force"] = "true"
    body = api.call("GET", f"/api/v1/chart/{chart_id}/data/", params=params)
    if args.rows:
        if args.type != "full":
            sys.exit("superset_provision.py: --rows goes with --type full")
        result = body["result"][0]
        if result.get("status") not in (None, "success") or result.get("error"):
            sys.exit(f"superset_provision.py: chart {chart_id}: {result.get('status')}: {result.get('error')}")
        body = normalize_rows(result)
    try:
        json.dump(body, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:  # e.g. piped into head
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# ---------------------------------------------------------------- a user's own path


USER_CHART = "Impressions per hour (last day)"


def open_chromium():
    """Headless Debian Chromium through selenium (a Superset dependency) and chromedriver."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not chromium or not driver:
        sys.exit("superset_provision.py: the browser steps need chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1600,1500"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(driver), options=opts)


def log_in(d, base: str) -> None:
    """The form at /login/ (fields #username, #password), as a person fills it in."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    for attempt in (1, 2, 3):
        # the form is drawn by the front end; a submit it drops (rarely, under load) is tried again
        d.get(f"{base}/login/")
        WebDriverWait(d, 60).until(EC.element_to_be_clickable((By.ID, "password")))
        d.find_element(By.ID, "username").clear()
        d.find_element(By.ID, "username").send_keys(env("SUPERSET_ADMIN_USER"))
        d.find_element(By.ID, "password").send_keys(env("SUPERSET_ADMIN_PASSWORD") + "\n")
        try:
            WebDriverWait(d, 20).until(lambda drv: "/login" not in drv.current_url)
            return
        except TimeoutException:
            if attempt == 3:
                raise ApiError("still on /login/ after 3 attempts of 20 s: wrong password?")
            print(f"superset_provision.py: login attempt {attempt} did not leave /login/, again", file=sys.stderr)


# The rows of the result grid (AG Grid) on screen: one object per row, header text -> cell text,
# in the order shown. Takes the grid's container element.
GRID_ROWS_JS = r"""
var root = arguments[0];
var names = {};
root.querySelectorAll('.ag-header-cell[col-id]').forEach(function (h) {
  names[h.getAttribute('col-id')] = h.innerText.trim();
});
var rows = Array.from(root.querySelectorAll('.ag-center-cols-container [role="row"]'));
rows.sort(function (a, b) { return Number(a.getAttribute('row-index')) - Number(b.getAttribute('row-index')); });
return rows.map(function (r) {
  var out = {};
  r.querySelectorAll('[role="gridcell"][col-id]').forEach(function (c) {
    var id = c.getAttribute('col-id');
    out[names[id] || id] = c.innerText.trim();
  });
  return out;
});
"""


def as_a_user(args: argparse.Namespace) -> None:
    """What a user does by hand after provisioning, clicked through Superset's pages in headless
    Chromium: SQL Lab with the schema browser open (the schema, the table, its columns) and a query
    typed and run there; a physical dataset made on "+ Dataset" by picking the table
    campaign_metrics; a bar chart on it (x-axis window_start with the hour grain, SUM(impressions),
    the time filter "Last day") run, its results pane read, and saved onto the provisioned dashboard.

    Prints JSON: the schema browser's entries, the SQL Lab rows as shown, the dataset's columns as
    Superset saved them, the chart's results as shown and its saved query (SQL and rows, from the API,
    with the time bounds Superset applied). A chart of this name that an earlier run saved is deleted
    first, and an existing dataset on the table is used as it is (Superset allows one per table)."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        StaleElementReferenceException,
        TimeoutException,
        WebDriverException,
    )
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base = env("SUPERSET_URL", "http://127.0.0.1:8088").rstrip("/")
    api = Superset(base, env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD"))
    table = "campaign_metrics"
    found = api.find("database", "database_name", DATABASE_NAME)
    if not found:
        raise ApiError(f"no database {DATABASE_NAME!r}: run provision first")
    db_id, schema = found[0]["id"], args.schema

    def dataset_on_table() -> list[dict]:
        return [d for d in api.find("dataset", "table_name", table) if d["database"]["id"] == db_id and d.get("schema") == schema]

    for ds in dataset_on_table():
        for c in charts_on_dataset(api, ds["id"]):
            if c["slice_name"] == USER_CHART:
                api.call("DELETE", f"/api/v1/chart/{c['id']}")

    d = open_chromium()
    wait = WebDriverWait(d, 60, poll_frequency=0.2)
    clickable = lambda how, what: wait.until(EC.element_to_be_clickable((how, what)))  # noqa: E731

    def retried(action) -> None:
        """Do it once what it acts on is drawn and nothing covers it. A toast such as "The dataset
        has been saved" can cover an element for a few seconds, and React can redraw one between
        finding and using it (the database selector does once the databases have loaded): both
        are tried again, as is an input not yet ready for keys. Such an element refuses the click
        or the keys, so nothing is ever done twice."""

        def done(_drv) -> bool:
            try:
                action()
                return True
            except (ElementClickInterceptedException, ElementNotInteractableException, StaleElementReferenceException):
                return False

        wait.until(done)

    def press(how: str, what: str) -> None:
        """Click it (see `retried`)."""
        retried(lambda: clickable(how, what).click())

    def type_into(how: str, what: str, *keys: str) -> None:
        """Type into it (see `retried`); an Ant Design select's search input is transparent, so
        it is found, not waited on as clickable."""
        retried(lambda: d.find_element(how, what).send_keys(*keys))

    def shown(css: str):
        """The element on screen among those that match (SQL Lab keeps every tab's in the page)."""
        for e in d.find_elements(By.CSS_SELECTOR, css):
            if e.is_displayed():
                return e
        raise ApiError(f"nothing on screen matches {css}")

    def option(text: str, by_child: bool = True) -> str:
        """The enabled option of an open Ant Design select that reads `text`."""
        child = f" or .//*[normalize-space(text())='{text}']" if by_child else ""
        return (
            "//div[contains(@class,'ant-select-item-option') and not(contains(@class,'disabled'))]"
            f"[@title='{text}' or normalize-space(.)='{text}'{child}]"
        )

    def pick(container_css: str, text: str) -> None:
        """An Ant Design select: open it, type, click the option that reads `text`."""
        press(By.CSS_SELECTOR, container_css)
        type_into(By.CSS_SELECTOR, f"{container_css} input", text)
        press(By.XPATH, option(text))

    def pick_existing(container_css: str, text: str) -> None:
        """An Ant Design select that also offers to create what is typed: open it and click the
        listed option that reads `text`, without typing. Typed before the list had loaded, the
        text itself was offered as a new entry, and the chart went onto a new dashboard of the
        same name."""
        press(By.CSS_SELECTOR, container_css)
        press(By.XPATH, option(text, by_child=False))

    step = "logging in"
    out: dict = {}
    try:
        log_in(d, base)

        step = "SQL Lab"
        d.get(f"{base}/sqllab/")
        wait.until(lambda drv: drv.find_elements(By.CSS_SELECTOR, ".ace_editor") or drv.find_elements(By.CSS_SELECTOR, "[data-test='add-tab-icon']"))
        if not d.find_elements(By.CSS_SELECTOR, ".ace_editor"):  # every tab closed earlier: open one
            press(By.CSS_SELECTOR, "[data-test='add-tab-icon']")
            wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".ace_editor")))
        press(By.CSS_SELECTOR, "[data-test='sql-editor-left-bar'] [data-test='DatabaseSelector']")
        pick(".ant-popover [data-test='select-database']", DATABASE_NAME)
        pick(".ant-popover [data-test='Select schema']", schema)
        press(By.XPATH, "//div[contains(@class,'ant-popover')]//button[normalize-space(.)='Select']")
        step = "SQL Lab's schema browser"
        tree = "//*[@data-test='sql-editor-left-bar']//*[@role='treeitem']"
        press(By.XPATH, f"{tree}[normalize-space(.)='{schema}']")
        press(By.XPATH, f"{tree}[normalize-space(.)='{table}']")
        wait.until(EC.presence_of_element_located((By.XPATH, f"{tree}[contains(normalize-space(.),'window_start')]")))
        out["browser"] = [e.text for e in d.find_elements(By.XPATH, tree) if e.text]
        step = "a query in SQL Lab"

        def replace_query() -> None:
            """Select all, delete, type: begun again whole if the editor is redrawn midway, so
            no half-typed query is left to add to."""
            editor = shown(".ace_editor").find_element(By.CSS_SELECTOR, "textarea.ace_text-input")
            editor.send_keys(Keys.CONTROL, "a")
            editor.send_keys(Keys.DELETE)
            editor.send_keys(args.sql)

        retried(replace_query)
        retried(lambda: shown("[data-test='run-query-action']").click())
        wait.until(lambda drv: any(e.is_displayed() for e in drv.find_elements(By.CSS_SELECTOR, "[data-test='south-pane'] .ag-center-cols-container [role='row']")))
        out["sqllab"] = d.execute_script(GRID_ROWS_JS, shown("[data-test='south-pane']"))

        step = "a dataset from the table"
        existing = dataset_on_table()
        if existing:
            d.get(f"{base}/explore/?datasource_type=table&datasource_id={existing[0]['id']}&viz_type=echarts_timeseries_bar")
        else:
            d.get(f"{base}/dataset/add/")
            pick("[data-test='select-database']", DATABASE_NAME)
            pick("[data-test='Select schema']", schema)
            pick("[data-test='Select table or type to search tables']", table)
            wait.until(EC.presence_of_element_located((By.XPATH, "//*[normalize-space(text())='window_start']")))
            press(By.XPATH, "//button[normalize-space(.)='Create and explore dataset']")
            step = "a bar chart on the new dataset"
            press(By.XPATH, "//*[@data-test='viztype-selector-container'][normalize-space(.)='Bar Chart']")
            press(By.XPATH, "//button[normalize-space(.)='Create new chart']")
        wait.until(lambda drv: "/explore" in drv.current_url)

        step = "the chart's x-axis"
        press(By.CSS_SELECTOR, "[data-test='x_axis'] [data-test='dnd-labels-container']")
        pick(".ant-popover [data-test='Columns and metrics']", TIME_COL)
        press(By.CSS_SELECTOR, "[data-test='ColumnEdit#save']")
        step = "the chart's time grain"
        pick("[data-test='Time Grain']", "Hour")
        step = "the chart's metric"
        press(By.CSS_SELECTOR, "[data-test='metrics'] [data-test='dnd-labels-container']")
        press(By.XPATH, "//div[contains(@class,'ant-popover')]//div[contains(@class,'ant-tabs-tab')][normalize-space(.)='Simple']")
        pick(".ant-popover [data-test='Select column']", "impressions")
        pick(".ant-popover [data-test='Select aggregate options']", "SUM")
        press(By.CSS_SELECTOR, "[data-test='AdhocMetricEdit#save']")
        step = "the chart's time range"
        press(By.XPATH, f"//*[@data-test='adhoc_filters']//*[@data-test='control-label'][contains(.,'{TIME_COL}')]")
        press(By.CSS_SELECTOR, "[data-test='time-range-trigger']")
        pick("[data-test='Range type']", "Last")
        press(By.XPATH, "//label[contains(@class,'ant-radio-wrapper')][normalize-space(.)='Last day']")
        press(By.CSS_SELECTOR, "[data-test='date-filter-control__apply-button']")
        press(By.CSS_SELECTOR, "[data-test='adhoc-filter-edit-popover-save-button']")
        step = "running the chart"
        press(By.CSS_SELECTOR, "[data-test='run-query-button']")
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "[data-test='chart-container'] canvas")))
        press(By.XPATH, "//*[@data-test='some-purposeful-instance']//*[contains(@class,'ant-tabs-tab')][normalize-space(.)='Results']")
        results = "[data-test='some-purposeful-instance'] .ag-center-cols-container [role='row']"
        wait.until(lambda drv: any(e.is_displayed() for e in drv.find_elements(By.CSS_SELECTOR, results)))
        out["chart_shown"] = d.execute_script(GRID_ROWS_JS, shown("[data-test='some-purposeful-instance']"))

        step = "saving the chart onto the dashboard"
        press(By.CSS_SELECTOR, "[data-test='query-save-button']")
        # one action, so that a redraw between selecting and typing cannot leave the old name
        # (Keys.NULL lets go of Ctrl, which the keys after it would otherwise be typed with)
        type_into(By.CSS_SELECTOR, "[data-test='new-chart-name']", Keys.CONTROL, "a", Keys.NULL, Keys.DELETE, USER_CHART)
        pick_existing(".ant-modal [data-test='Select a dashboard']", DASHBOARD_TITLE)
        press(By.XPATH, "//*[@data-test='save-modal-footer']//button[normalize-space(.)='Save & go to dashboard']")
        wait.until(lambda drv: "/superset/dashboard/" in drv.current_url)
    except (WebDriverException, TimeoutException, ApiError) as e:
        shot = os.path.join(os.environ.get("SUPERSET_HOME", "."), "as-a-user-failed.png")
        d.save_screenshot(shot)
        detail = (e.msg or "" if isinstance(e, WebDriverException) else str(e)).strip()[:300]
        sys.exit(f"superset_provision.py: as-a-user, {step}: {type(e).__name__} {detail} (page: {shot})")
    finally:
        d.quit()

    ds_id = dataset_on_table()[0]["id"]
    dataset = api.call("GET", f"/api/v1/dataset/{ds_id}")["result"]
    mine = [c for c in charts_on_dataset(api, ds_id) if c["slice_name"] == USER_CHART]
    if len(mine) != 1:
        raise ApiError(f"{len(mine)} charts named {USER_CHART!r} after saving, expected 1")
    chart_id = mine[0]["id"]
    # the dashboard draws the charts saved onto it; the layout places one it does not list yet last
    dash_id = api.call("GET", f"/api/v1/dashboard/{DASHBOARD_SLUG}")["result"]["id"]
    saved = api.call("GET", f"/api/v1/chart/{chart_id}")["result"]
    on_dashboard = any(x["id"] == dash_id for x in saved.get("dashboards", []))
    data = api.call("GET", f"/api/v1/chart/{chart_id}/data/", params={"format": "json", "type": "full", "force": "true"})
    result = data["result"][0]
    if result.get("error"):
        raise ApiError(f"chart {chart_id}: {result['error']}")
    out["dataset"] = {
        "id": ds_id,
        "columns": [{"name": c["column_name"], "type": c["type"], "is_dttm": c["is_dttm"]} for c in dataset["columns"]],
    }
    out["chart"] = {"id": chart_id, "on_dashboard": on_dashboard, "query": result.get("query"), "rows": normalize_rows(result)}
    json.dump(out, sys.stdout, indent=1, default=str)
    sys.stdout.write("\n")


# ---------------------------------------------------------------- load


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p95 of 3 values = the largest)."""
    import math

    if not values:
        return None
    v = sorted(values)
    return v[max(0, math.ceil(p / 100.0 * len(v)) - 1)]


class Viewer:
    """One user: an own requests session logged in through the /login/ form (the browser's cookie
    session), at most 6 connections at once (a browser's limit per host)."""

    def __init__(self, base: str, user: str, password: str):
        import re

        import requests
        from requests.adapters import HTTPAdapter

        self.base = base
        self.http = requests.Session()
        self.http.mount(base, HTTPAdapter(pool_connections=1, pool_maxsize=6, pool_block=True))
        self.csrf_re = re.compile(r'name="csrf_token"\s+id="csrf_token"\s+value="([^"]+)"')
        r = self.http.get(f"{base}/login/", timeout=60)
        m = self.csrf_re.search(r.text)
        if r.status_code != 200 or not m:
            raise ApiError(f"GET /login/: HTTP {r.status_code}, no csrf_token in the form")
        for _ in range(10):  # Superset limits logins (AUTH_RATE_LIMIT, 5 per second): wait, again
            r = self.http.post(
                f"{base}/login/",
                data={"username": user, "password": password, "csrf_token": m.group(1)},
                allow_redirects=False,
                timeout=60,
            )
            if r.status_code != 429:
                break
            time.sleep(1)
        if r.status_code not in (302, 303) or "/login" in r.headers.get("Location", "/login"):
            raise ApiError(f"login as {user!r} through /login/ failed: HTTP {r.status_code}")

        self.retries = 0

    def request(self, method: str, path: str, **kw):
        """One request; a connection error is retried once, as a browser does when a kept-alive
        connection was closed by the server (gunicorn --keep-alive 5) just as the request went out."""
        import requests

        for attempt in (1, 2):
            try:
                return self.http.request(method, f"{self.base}{path}", timeout=300, **kw)
            except requests.ConnectionError as e:
                if attempt == 2:
                    raise ApiError(f"{method} {path}: {e}") from e
                self.retries += 1
            except requests.RequestException as e:
                raise ApiError(f"{method} {path}: {e}") from e

    def get(self, path: str):
        r = self.request("GET", path)
        if r.status_code != 200:
            raise ApiError(f"GET {path}: HTTP {r.status_code} {r.text[:300]}")
        return r


def load(args: argparse.Namespace) -> None:
    """What one dashboard view costs for 1 and for N concurrent users (see superset.sh's header)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    base = env("SUPERSET_URL", "http://127.0.0.1:8088").rstrip("/")
    user, password = env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD")
    api = Superset(base, user, password)
    r = api.http.get(f"{api.base}/api/v1/dashboard/{DASHBOARD_SLUG}", timeout=60)
    if r.status_code != 200:
        raise ApiError(f"dashboard {DASHBOARD_SLUG!r}: HTTP {r.status_code} (run provision first)")
    dash_id = r.json()["result"]["id"]
    # each chart's saved query_context, as the browser would send it (read once, outside the timing)
    contexts: dict[int, dict] = {}
    for c in api.call("GET", f"/api/v1/dashboard/{dash_id}/charts")["result"]:
        qc = api.call("GET", f"/api/v1/chart/{c['id']}")["result"].get("query_context")
        if not qc:
            raise ApiError(f"chart {c['id']} ({c['slice_name']}) has no saved query_context (run provision)")
        contexts[c["id"]] = json.loads(qc)
    page = f"/superset/dashboard/{DASHBOARD_SLUG}/"
    print(
        f"load: {base}{page} (dashboard {dash_id}, {len(contexts)} charts), {args.rounds} rounds, "
        f"1 and {args.users} users",
        file=sys.stderr,
    )

    def view(v: Viewer, pool: ThreadPoolExecutor, force: bool) -> dict:
        """One dashboard view as the browser makes it: the page, then the dashboard, its charts and
        datasets (in parallel), then every chart's data (up to 6 at once)."""
        t0 = time.perf_counter()
        html = v.get(page).text
        m = v.csrf_re.search(html)
        if not m:
            raise ApiError(f"GET {page}: no csrf_token in the page")
        csrf = m.group(1)
        t_page = time.perf_counter()
        meta = list(
            pool.map(v.get, [f"/api/v1/dashboard/{dash_id}", f"/api/v1/dashboard/{dash_id}/charts", f"/api/v1/dashboard/{dash_id}/datasets"])
        )
        ids = [c["id"] for c in meta[1].json()["result"]]
        t_meta = time.perf_counter()

        def chart(cid: int) -> tuple[float, bool, str | None]:
            body = dict(contexts[cid], force=force)
            c0 = time.perf_counter()
            try:
                r = v.request(
                    "POST", "/api/v1/chart/data", json=body, headers={"X-CSRFToken": csrf, "Referer": f"{base}{page}"}
                )
            except ApiError as e:
                return time.perf_counter() - c0, False, f"chart {cid}: {e}"
            took = time.perf_counter() - c0
            if r.status_code != 200:
                return took, False, f"chart {cid}: HTTP {r.status_code} {r.text[:300]}"
            res = r.json()["result"][0]
            if res.get("status") not in (None, "success") or res.get("error"):
                return took, False, f"chart {cid}: {res.get('status')}: {str(res.get('error'))[:300]}"
            return took, bool(res.get("is_cached")), None

        calls = list(pool.map(chart, ids))
        t_end = time.perf_counter()
        return {
            "seconds": t_end - t0,
            "phases": {"page": t_page - t0, "dashboard_api": t_meta - t_page, "chart_data": t_end - t_meta},
            "calls": calls,
        }

    def f(x):
        return "-" if x is None else f"{x:.2f}"

    def scenario(users: int, force: bool) -> dict:
        viewers = [Viewer(base, user, password) for _ in range(users)]  # logins: not timed
        pools = [ThreadPoolExecutor(6) for _ in range(users)]
        if not force:  # fill the cache first (not timed)
            view(viewers[0], pools[0], False)
        barrier = threading.Barrier(users)
        views: list[dict] = []
        errors: list[str] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            for _ in range(args.rounds):
                barrier.wait()  # the users open the dashboard at the same moment, every round
                try:
                    out = view(viewers[i], pools[i], force)
                except Exception as e:  # noqa: BLE001 - counted and reported
                    with lock:
                        errors.append(f"user {i + 1}: {e}"[:400])
                    continue
                with lock:
                    views.append(out)
                    errors.extend(err for _, _, err in out["calls"] if err)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=run, args=(i,)) for i in range(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        for p in pools:
            p.shutdown()
        view_s = [x["seconds"] for x in views]
        call_s = [c[0] for x in views for c in x["calls"]]
        cached = sum(1 for x in views for c in x["calls"] if c[1])
        row = {
            "users": users,
            "rounds": args.rounds,
            "cached": not force,
            "views": len(views),
            "view_p50": percentile(view_s, 50),
            "view_p95": percentile(view_s, 95),
            "view_max": max(view_s) if view_s else None,
            "chart_data_calls": len(call_s),
            "chart_data_p50": percentile(call_s, 50),
            "chart_data_p95": percentile(call_s, 95),
            "cache_hits": cached,
            "errors": len(errors),
            "wall_seconds": wall,
            "connection_retries": sum(v.retries for v in viewers),
            # median seconds of each part of a view: the page, the 3 dashboard API calls, the chart data
            "phase_p50": {
                k: percentile([x["phases"][k] for x in views], 50) for k in ("page", "dashboard_api", "chart_data")
            },
            "error_samples": errors[:5],
        }
        print(
            f"  {users} user(s), {'cached' if not force else 'force=true'}: {len(views)} views in {wall:.1f} s, "
            f"{len(errors)} errors, {row['connection_retries']} requests retried after a connection error; "
            f"median view = page {f(row['phase_p50']['page'])} s + dashboard API {f(row['phase_p50']['dashboard_api'])} s "
            f"+ chart data {f(row['phase_p50']['chart_data'])} s",
            file=sys.stderr,
        )
        for e in errors[:5]:
            print(f"    {e}", file=sys.stderr)
        return row

    user_counts = [1] if args.users == 1 else [1, args.users]
    tables = [("uncached (force=true: every chart-data call queries the SQL endpoint)", True)]
    if args.cached:
        tables.append(("cached (Superset's data cache, filled by one view first)", False))
    results = []
    for title, force in tables:
        rows = [scenario(n, force) for n in user_counts]
        results.append({"title": title, "rows": rows})

    lines = [f"Dashboard view: GET {page}, GET /api/v1/dashboard/{dash_id}[/charts,/datasets], POST /api/v1/chart/data x {len(contexts)} (6 at once per user)", ""]
    for t in results:
        lines += [
            f"{t['title'][0].upper()}{t['title'][1:]}:",
            "",
            "| users | rounds | views | view p50 s | view p95 s | view p95 vs 1 user | view max s | chart-data calls | chart-data p50 s | chart-data p95 s | cache hits | errors |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        # the baseline of the ratio: one user's views, measured in the same run
        alone = t["rows"][0]["view_p95"]
        for r in t["rows"]:
            ratio = f"{r['view_p95'] / alone:.1f}x" if alone and r["view_p95"] is not None else "-"
            lines.append(
                f"| {r['users']} | {r['rounds']} | {r['views']} | {f(r['view_p50'])} | {f(r['view_p95'])} | {ratio} | {f(r['view_max'])} "
                f"| {r['chart_data_calls']} | {f(r['chart_data_p50'])} | {f(r['chart_data_p95'])} | {r['cache_hits']} | {r['errors']} |"
            )
        lines.append("")
    print("\n".join(lines).rstrip())
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"superset_url": base, "dashboard_id": dash_id, "charts": len(contexts), "tables": results}, fh, indent=1)
            fh.write("\n")
    if any(r["errors"] for t in results for r in t["rows"]):
        sys.exit(1)


# ---------------------------------------------------------------- browser check


# What the dashboard shows, read in one call: every chart's id, name, viz type and state
# (error / loading / rendered / empty), and the table cells (header id `header-<metric>` -> text).
PAGE_STATE_JS = r"""
return Array.from(document.querySelectorAll('[data-test="chart-grid-component"]')).map(function (el) {
  var out = {
    id: Number(el.getAttribute('data-test-chart-id')),
    name: el.getAttribute('data-test-chart-name'),
    viz_type: el.getAttribute('data-test-viz-type'),
    state: 'pending',
    error: null,
    cells: null
  };
  var err = el.querySelector('.ant-alert-error');
  if (err) {
    out.state = 'error';
    out.error = err.innerText.replace(/\s+See more\s*$/, '').trim().slice(0, 500);
    return out;
  }
  if (el.querySelector('.loading')) { out.state = 'loading'; return out; }
  var heads = el.querySelectorAll('table thead th');
  var rows = el.querySelectorAll('table tbody tr');
  if (heads.length && rows.length) {
    out.state = 'rendered';
    out.cells = {};
    var first = rows[0].querySelectorAll('td');
    heads.forEach(function (th, i) {
      var key = (th.id || '').replace(/^header-/, '') || th.innerText.trim();
      out.cells[key] = { header: th.innerText.trim(), text: first[i] ? first[i].innerText.trim() : null };
    });
    return out;
  }
  if (el.querySelector('canvas')) { out.state = 'rendered'; return out; }
  var body = el.querySelector('.dashboard-chart');
  if (body && /no results/i.test(body.innerText)) out.state = 'no_results';
  return out;
});
"""


def shown_number(text: str | None):
    """A number as a d3 format shows it (',d' or ',.2f': 249,480.62) as int or float; None if not one."""
    if text is None:
        return None
    t = text.replace(",", "").replace("\u2212", "-").strip()
    try:
        return int(t) if t.lstrip("-").isdigit() else float(t)
    except ValueError:
        return None


def screenshot(args: argparse.Namespace) -> None:
    """Log in through the form at /login/ (fields #username, #password), open the dashboard in headless
    Chromium, wait until every chart has drawn or failed, optionally pick campaigns in the native filter
    and apply it, save a PNG and print one JSON object on stdout (nothing else goes to stdout):

      {"ok": true,                      false when a chart shows an error, is missing, or never finished
       "url": ..., "screenshot": PNG path or null (not taken),
       "render_seconds": 5.9,           load until every chart finished
       "filter": ["campaign_001"],      only with --campaign; then "filtered_render_seconds" too
       "charts": [{"id": 11, "name": "Totals", "viz_type": "table",
                   "state": "rendered" | "no_results" | "error" | "loading" | "pending" | "missing",
                   "error": null or the error shown}, ...],
       "totals": {"total_impressions": 88206, "total_clicks": 9854, "total_conversions": 1940,
                  "total_revenue": 249480.62, "ctr_pct": 11.17, "cvr_pct": 19.69},
                                        the Totals row as shown (after the filter, if any), parsed from its
                                        d3 formats, so 2 decimals for revenue and the percentages
       "totals_text": {"total_impressions": {"header": "Impressions", "text": "88,206"}, ...},
       "unfiltered_totals": {...},      with --campaign: the Totals row before the filter
       "errors": ["CTR % per campaign: DB engine Error ..."]}

    Exit status 0 when ok, 1 otherwise (the JSON is printed either way)."""
    from selenium.common.exceptions import TimeoutException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    base = env("SUPERSET_URL", "http://127.0.0.1:8088").rstrip("/")
    expected = [name for name, *_ in CHARTS]
    report: dict = {
        "ok": False,
        "url": f"{base}/superset/dashboard/{DASHBOARD_SLUG}/",
        "screenshot": None,
        "render_seconds": None,
        "charts": [],
        "totals": None,
        "totals_text": None,
        "errors": [],
    }

    def finished(states: list[dict]) -> bool:
        names = {c["name"] for c in states}
        if any(c["state"] == "error" for c in states):
            return True  # one error is enough to fail; the others get a moment below
        return all(n in names for n in expected) and all(c["state"] in ("rendered", "no_results") for c in states)

    def wait_charts(d, timeout: int) -> list[dict]:
        states: list[dict] = []

        def poll(drv) -> bool:
            nonlocal states
            states = drv.execute_script(PAGE_STATE_JS) or []
            return finished(states)

        try:
            WebDriverWait(d, timeout, poll_frequency=0.25).until(poll)
            if any(c["state"] == "error" for c in states):
                time.sleep(2)  # let the others finish so the report shows all of them
                states = d.execute_script(PAGE_STATE_JS) or []
        except TimeoutException:
            report["errors"].append(f"not every chart finished within {timeout} s")
        return states

    def totals_of(states: list[dict]):
        for c in states:
            if c["name"] == "Totals" and c.get("cells"):
                order = [m[0] for m in METRICS]
                cells = dict(sorted(c["cells"].items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
                return {k: shown_number(v["text"]) for k, v in cells.items()}, cells
        return None, None

    d = None
    states: list[dict] = []
    step = "starting chromium"
    try:
        d = open_chromium()
        step = "logging in"
        log_in(d, base)
        step = "the dashboard"
        t0 = time.monotonic()
        d.get(report["url"])
        states = wait_charts(d, args.timeout)
        report["render_seconds"] = round(time.monotonic() - t0, 2)
        if args.campaign and not report["errors"] and not any(c["state"] == "error" for c in states):
            step = "the campaign filter"
            report["unfiltered_totals"] = totals_of(states)[0]
            box = WebDriverWait(d, 30).until(
                EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-test='filter-bar'] .ant-select-selector"))
            )
            box.click()
            field = d.switch_to.active_element
            for value in args.campaign:
                field.send_keys(value)
                time.sleep(1)
                field.send_keys(Keys.ENTER)
                time.sleep(0.5)
            field.send_keys(Keys.ESCAPE)
            WebDriverWait(d, 30).until(
                EC.element_to_be_clickable((By.CSS_SELECTOR, "[data-test='filter-bar__apply-button']"))
            ).click()
            report["filter"] = args.campaign
            t0 = time.monotonic()
            before = totals_of(states)[1]
            try:  # the charts start over: wait for the Totals row to change (up to 10 s: it may not)
                WebDriverWait(d, 10, poll_frequency=0.25).until(
                    lambda drv: totals_of(drv.execute_script(PAGE_STATE_JS) or [])[1] not in (before, None)
                )
            except TimeoutException:
                pass
            states = wait_charts(d, args.timeout)
            report["filtered_render_seconds"] = round(time.monotonic() - t0, 2)
        time.sleep(1.5)  # animations
        states = d.execute_script(PAGE_STATE_JS) or states
        d.save_screenshot(args.out)
        report["screenshot"] = args.out
    except (WebDriverException, TimeoutException, ApiError) as e:
        detail = (e.msg or "" if isinstance(e, WebDriverException) else str(e)).strip()[:500]
        report["errors"].append(f"{step}: {type(e).__name__}" + (f": {detail}" if detail else ""))
        if d is not None:
            try:  # what the browser showed when it failed
                d.save_screenshot(args.out)
                report["screenshot"] = args.out
            except WebDriverException:
                pass
    finally:
        if d is not None:
            d.quit()
    seen = {c["name"] for c in states}
    report["charts"] = [
        {k: c.get(k) for k in ("id", "name", "viz_type", "state", "error")} for c in states
    ] + [{"id": None, "name": n, "viz_type": None, "state": "missing", "error": None} for n in expected if n not in seen]
    report["totals"], report["totals_text"] = totals_of(states)
    report["errors"] += [f"{c['name']}: {c['error']}" for c in report["charts"] if c["state"] == "error"]
    report["errors"] += [
        f"{c['name']}: {c['state']}" for c in report["charts"] if c["state"] in ("missing", "loading", "pending")
    ]
    report["ok"] = not report["errors"] and report["totals"] is not None
    if report["totals"] is None and not report["errors"]:
        report["errors"].append("Totals: no table row shown")
    print(json.dumps(report, indent=1))
    sys.stdout.flush()
    if not report["ok"]:
        sys.exit(1)


# ---------------------------------------------------------------- admin user


def admin(_args: argparse.Namespace) -> None:
    user, password = env("SUPERSET_ADMIN_USER"), env("SUPERSET_ADMIN_PASSWORD")
    email = os.environ.get("SUPERSET_ADMIN_EMAIL") or f"{user}@localhost.localdomain"
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset import security_manager as sm

        role = sm.find_role("Admin")
        if role is None:
            sys.exit("no Admin role: run `superset init` first")
        found = sm.find_user(username=user)
        if found is None:
            if not sm.add_user(user, "Superset", "Admin", email, [role], password=password):
                sys.exit(f"could not create the admin user {user!r}")
            print(f"admin user {user!r} created")
        else:
            sm.reset_password(found.id, password)
            if role not in found.roles:
                found.roles.append(role)
                sm.update_user(found)
            print(f"admin user {user!r} exists: password (and Admin role) set")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("provision")
    pp.add_argument("--out", help="JSON file of the ids (default SUPERSET_HOME/provisioned.json)")
    pp.add_argument("--schema", default=os.environ.get("CAMPAIGN_SQL_SCHEMA", "campaigns"))
    pp.add_argument(
        "--lookback-hours",
        type=int,
        default=int(os.environ.get("CAMPAIGN_DASHBOARD_LOOKBACK_HOURS", "0")),
        help="time series show only the last N hours (WHERE window_start >= NOW() - INTERVAL 'N hours'); "
        "0 = everything (default; the totals and the top campaigns always cover everything)",
    )
    pc = sub.add_parser("chart-data")
    pc.add_argument("chart", help="chart name (slice_name) or id")
    pc.add_argument("--rows", action="store_true", help="print only the first query's rows")
    pc.add_argument("--cached", action="store_true", help="allow Superset's cache (default force=true)")
    pc.add_argument("--type", default="full", choices=["full", "query", "samples", "results"])
    ps = sub.add_parser("screenshot")
    ps.add_argument("--out", default="dashboard.png", help="PNG file (default dashboard.png)")
    ps.add_argument("--campaign", action="append", help="pick this campaign_id in the native filter (repeatable)")
    ps.add_argument("--timeout", type=int, default=120, help="seconds to wait for the charts")
    pl = sub.add_parser("load")
    pl.add_argument("--users", type=int, default=10, help="concurrent users, each with its own session (default 10)")
    pl.add_argument("--rounds", type=int, default=3, help="views per user, all users at once each round (default 3)")
    pl.add_argument("--cached", action="store_true", help="also measure with Superset's data cache (second table)")
    pl.add_argument("--out", help="also write the figures as JSON to this file")
    pu = sub.add_parser("as-a-user")
    pu.add_argument("--schema", default=os.environ.get("CAMPAIGN_SQL_SCHEMA", "campaigns"))
    pu.add_argument("--sql", default="SELECT campaign_id, SUM(impressions) AS impressions FROM campaign_metrics GROUP BY campaign_id ORDER BY campaign_id")
    sub.add_parser("admin")
    args = p.parse_args()
    if args.cmd == "load" and (args.users < 1 or args.rounds < 1):
        p.error("--users and --rounds must be at least 1")
    try:
        {
            "provision": provision,
            "chart-data": chart_data,
            "screenshot": screenshot,
            "load": load,
            "admin": admin,
            "as-a-user": as_a_user,
        }[
            args.cmd
        ](args)
    except ApiError as e:
        sys.exit(f"superset_provision.py: {e}")


if __name__ == "__main__":
    main()

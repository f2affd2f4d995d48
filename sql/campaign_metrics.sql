-- Metrics SQL: parsed campaign events -> per-campaign tumbling event-time windows.
--
-- Input:  campaign_events (the valid rows of the parsing SQL, without _ columns)
-- Output: one row per campaign and window, written to the campaign_metrics table when the
--         watermark passes the window's end.
--
-- The window size lives only here: change both INTERVALs together to resize the window.
-- Add a metric by adding an aggregate (COUNT, SUM, AVG, MIN, MAX, COUNT(DISTINCT ...)).
WITH windows AS (
  SELECT
    campaign_id,
    date_bin(INTERVAL '1 minute', "timestamp")              AS window_start,
    count(*) FILTER (WHERE event_type = 'impression')       AS impressions,
    count(*) FILTER (WHERE event_type = 'click')            AS clicks,
    count(*) FILTER (WHERE event_type = 'conversion')       AS conversions,
    coalesce(sum(revenue) FILTER (WHERE event_type = 'conversion'), 0.0) AS revenue
  FROM campaign_events
  GROUP BY campaign_id, date_bin(INTERVAL '1 minute', "timestamp")
)
SELECT
  campaign_id,
  window_start,
  window_start + INTERVAL '1 minute'                          AS window_end,
  impressions,
  clicks,
  conversions,
  revenue,
  CAST(clicks AS DOUBLE) * 100.0 / nullif(impressions, 0)     AS ctr_percent,
  CAST(conversions AS DOUBLE) * 100.0 / nullif(clicks, 0)     AS cvr_percent,
  now()                                                       AS processed_at
FROM windows

-- Parsing SQL: raw Kafka records -> typed campaign events, plus validation.
--
-- Input:  kafka_records(_topic, _partition, _offset, _timestamp, _key, value)
--         (payloads that are not UTF-8 never get here: the runner dead-letters them)
-- Output: the columns of the campaign_events table, _topic/_partition/_offset passed
--         through, and _error: NULL for a valid row, else a short reason. Rows with a
--         reason go to the dead letter queue; columns starting with _ are never written.
--
-- Edit the CASE below to change the validation rules.
WITH fields AS (
  SELECT
    _topic,
    _partition,
    _offset,
    -- One parse for all fields: strings come decoded, other values as their JSON text, and
    -- the whole struct is NULL when value is not a well-formed JSON object.
    json_fields(value, 'event_id', 'user_id', 'campaign_id', 'event_type', 'platform',
                'timestamp', 'revenue', 'country', 'device_type') AS f
  FROM kafka_records
),
typed AS (
  SELECT
    _topic,
    _partition,
    _offset,
    f,
    f['event_id']                                AS event_id,
    f['user_id']                                 AS user_id,
    f['campaign_id']                             AS campaign_id,
    f['event_type']                              AS event_type,
    f['platform']                                AS platform,
    f['country']                                 AS country,
    f['device_type']                             AS device_type,
    f['timestamp']                               AS _timestamp_text,
    f['revenue']                                 AS _revenue_json,
    try_cast(f['timestamp'] AS TIMESTAMPTZ)      AS _event_time,
    try_cast(f['revenue'] AS DOUBLE)             AS _revenue
  FROM fields
)
SELECT
  event_id,
  user_id,
  campaign_id,
  event_type,
  platform,
  _event_time                  AS "timestamp",
  coalesce(_revenue, 0.0)      AS revenue,
  country,
  device_type,
  now()                        AS processed_at,
  _topic,
  _partition,
  _offset,
  CASE
    WHEN f IS NULL                                   THEN 'broken json'
    WHEN event_id IS NULL OR event_id = ''           THEN 'missing event_id'
    WHEN user_id IS NULL OR user_id = ''             THEN 'missing user_id'
    WHEN campaign_id IS NULL OR campaign_id = ''     THEN 'missing campaign_id'
    WHEN event_type IS NULL                          THEN 'missing event_type'
    WHEN event_type NOT IN ('impression', 'click', 'conversion')
                                                     THEN 'unknown event_type: ' || event_type
    WHEN _timestamp_text IS NULL                     THEN 'missing timestamp'
    WHEN _event_time IS NULL                         THEN 'bad timestamp: ' || _timestamp_text
    WHEN _revenue_json IS NOT NULL AND _revenue IS NULL
                                                     THEN 'non-numeric revenue: ' || _revenue_json
    WHEN _revenue < 0                                THEN 'negative revenue: ' || _revenue_json
  END AS _error
FROM typed

-- Parsing SQL: raw Kafka records -> typed campaign events, plus validation.
--
-- Input:  kafka_records(_topic, _partition, _offset, _timestamp, _key, value)
--         (payloads that are not UTF-8 never get here: the runner dead-letters them)
-- Output: the columns of the campaign_events table, _topic/_partition/_offset passed
--         through, and _error: NULL for a valid row, else a short reason. Rows with a
--         reason go to the dead letter queue; columns starting with _ are never written.
--
-- Edit the CASE below to change the validation rules; the first rule that matches gives
-- the reason. The runner checks every rule on every row in one pass and computes each reason
-- only for the rows it is theirs, as long as no rule can fail (no division, no CAST that can
-- fail: use try_cast); otherwise the CASE copies what it reads after every rule that matches.
-- The limits are plain numbers in it:
--   65536 bytes  largest message accepted (`too large`; the payload is kept in the DLQ)
--   256 chars    longest identifier (event_id, user_id, campaign_id)
--   64 chars     longest platform, country or device_type
-- Required fields: event_id, user_id, campaign_id, event_type. Optional: platform, country,
-- device_type (NULL when absent), revenue (0 when absent) and timestamp (the Kafka record's
-- timestamp, the producer's CreateTime, when absent or null).
-- Event times further than window.max_future ahead of the runner's clock are rejected by
-- the runner itself (`future timestamp: ...`), whatever this file says.
WITH fields AS (
  SELECT
    _topic,
    _partition,
    _offset,
    _timestamp,
    octet_length(value)                          AS _bytes,
    -- One parse for all fields: strings come decoded, other values as their JSON text, and
    -- the whole struct is NULL when value is not a well-formed JSON object. f['$type'][key]
    -- is the value's JSON type: string, number, boolean, array or object (NULL when absent).
    json_fields(value, 'event_id', 'user_id', 'campaign_id', 'event_type', 'platform',
                'timestamp', 'revenue', 'country', 'device_type') AS f
  FROM kafka_records
),
typed AS (
  SELECT
    _topic,
    _partition,
    _offset,
    _timestamp,
    _bytes,
    -- The rules below read this flag rather than f itself: the rows some rule matches are
    -- copied with every column the CASE reads, and f holds every field.
    f IS NULL                                    AS _broken,
    f['$type']                                   AS t,
    f['event_id']                                AS event_id,
    f['user_id']                                 AS user_id,
    f['campaign_id']                             AS campaign_id,
    f['event_type']                              AS event_type,
    f['platform']                                AS platform,
    f['country']                                 AS country,
    f['device_type']                             AS device_type,
    f['timestamp']                               AS _timestamp_text,
    f['revenue']                                 AS _revenue_json,
    -- Event time: the event's own `timestamp`; an event that carries none (absent or null)
    -- takes its Kafka record's timestamp (the producer's CreateTime), so apps that send no
    -- clock of their own still count. A timestamp that is present but unreadable stays NULL
    -- here and is rejected below, and so does a record timestamp outside the years
    -- 1677-2262 that TIMESTAMPTZ holds (a producer may set any).
    CASE
      WHEN f['timestamp'] IS NULL THEN try_cast(_timestamp AS TIMESTAMPTZ)
      ELSE try_cast(f['timestamp'] AS TIMESTAMPTZ)
    END                                          AS _event_time,
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
    WHEN _bytes > 65536                              THEN 'too large'
    WHEN _broken                                     THEN 'broken json'
    -- Identifiers: JSON strings, not blank, at most 256 characters.
    WHEN event_id IS NULL                            THEN 'missing event_id'
    WHEN t['event_id'] <> 'string'                   THEN 'wrong type: event_id'
    WHEN trim(event_id) = ''                         THEN 'blank event_id'
    WHEN character_length(event_id) > 256            THEN 'too long: event_id'
    WHEN user_id IS NULL                             THEN 'missing user_id'
    WHEN t['user_id'] <> 'string'                    THEN 'wrong type: user_id'
    WHEN trim(user_id) = ''                          THEN 'blank user_id'
    WHEN character_length(user_id) > 256             THEN 'too long: user_id'
    WHEN campaign_id IS NULL                         THEN 'missing campaign_id'
    WHEN t['campaign_id'] <> 'string'                THEN 'wrong type: campaign_id'
    WHEN trim(campaign_id) = ''                      THEN 'blank campaign_id'
    WHEN character_length(campaign_id) > 256         THEN 'too long: campaign_id'
    -- The other fields: the JSON type each must have when present.
    WHEN t['event_type'] <> 'string'                 THEN 'wrong type: event_type'
    WHEN t['timestamp'] <> 'string'                  THEN 'wrong type: timestamp'
    WHEN t['revenue'] <> 'number'                    THEN 'wrong type: revenue'
    WHEN t['platform'] <> 'string'                   THEN 'wrong type: platform'
    WHEN t['country'] <> 'string'                    THEN 'wrong type: country'
    WHEN t['device_type'] <> 'string'                THEN 'wrong type: device_type'
    WHEN character_length(platform) > 64             THEN 'too long: platform'
    WHEN character_length(country) > 64              THEN 'too long: country'
    WHEN character_length(device_type) > 64          THEN 'too long: device_type'
    WHEN event_type IS NULL                          THEN 'missing event_type'
    WHEN event_type NOT IN ('impression', 'click', 'conversion')
                                                     THEN 'unknown event_type: ' || event_type
    -- Without a timestamp of its own an event has its record's; only a record without one
    -- (a producer that sets none) leaves it missing.
    WHEN _timestamp_text IS NULL AND _timestamp IS NULL
                                                     THEN 'missing timestamp'
    WHEN _timestamp_text IS NULL AND _event_time IS NULL
                                                     THEN 'record timestamp out of range: '
                                                          || arrow_cast(_timestamp, 'Int64')
                                                          || ' ms'
    WHEN _event_time IS NULL                         THEN 'bad timestamp: ' || _timestamp_text
    WHEN _revenue < 0                                THEN 'negative revenue: ' || _revenue_json
  END AS _error
FROM typed

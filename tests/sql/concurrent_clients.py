"""N psycopg2 clients at once against the SQL endpoint, each running every statement given.

usage: concurrent_clients.py URL N SQL...
Prints, as JSON, one list per statement of its rows as ';'-joined text (psql's unaligned form);
fails if any client errs or sees other rows than the rest.
"""
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg2


def text(value):
    if isinstance(value, float) and value.is_integer():
        return repr(value)
    return str(value)


def client(url, statements):
    with psycopg2.connect(url, connect_timeout=10) as conn:
        answers = []
        for sql in statements:
            with conn.cursor() as cur:
                cur.execute(sql)
                answers.append([";".join(text(v) for v in row) for row in cur.fetchall()])
        return answers


def main():
    url, n, statements = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    with ThreadPoolExecutor(max_workers=n) as pool:
        results = list(pool.map(lambda _: client(url, statements), range(n)))
    for other in results[1:]:
        if other != results[0]:
            sys.exit(f"clients disagree: {results[0]} vs {other}")
    print(json.dumps(results[0]))


if __name__ == "__main__":
    main()

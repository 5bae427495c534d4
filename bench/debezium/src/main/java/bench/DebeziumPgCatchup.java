package bench;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import java.io.IOException;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.TimeUnit;

/**
 * Debezium side of bench/pg-catchup: runs the Debezium PostgreSQL connector (pgoutput) in the
 * embedded engine, as a Debezium user embedding it would, and counts the change records of one
 * table. Built with {@code mvn -q package -Ppg} (Debezium 3.6.1, classpath under target/pg/).
 *
 * <p>Records are delivered already serialized to JSON by the engine ({@code Json.class} format,
 * Kafka's JsonConverter with schemas disabled), the same work our file sink does; the consumer
 * only counts them, sums their sizes, and drops them. Offsets go to a FileOffsetBackingStore
 * under {@code state=DIR}; the connector keeps no schema history.
 *
 * <p>Usage: {@code java -cp ... bench.DebeziumPgCatchup mode=init|run key=value...}
 * <ul>
 *   <li>{@code mode=init}: creates the publication (autocreate mode {@code filtered}: the
 *       captured table only) and the slot, takes no snapshot ({@code snapshot.mode=no_data}),
 *       waits for the first heartbeat record (emitted every 100 ms while streaming), commits
 *       its offset (the slot's consistent point), prints {@code OFFSET STORED} and exits 0.</li>
 *   <li>{@code mode=run n=N}: resumes from the stored offset, counts records of
 *       {@code schema.table} and, at N, prints one {@code DONE ...} line, then keeps the JVM
 *       alive (so the caller can read its /proc CPU and RSS) until SIGINT/SIGTERM, which closes
 *       the engine. With {@code snapshot=initial} (an empty state dir) the connector snapshots
 *       the table first (its default {@code snapshot.mode}), {@code snapshot_threads=T} setting
 *       {@code snapshot.max.threads}; the snapshot's records are counted the same way.</li>
 * </ul>
 * Other keys: host, port, user, password, dbname, table (default public.t), slot, publication,
 * state (directory), show_first (any value: print the first record to stderr), prop.K=V
 * (overrides an engine/connector property).
 */
public final class DebeziumPgCatchup {
    private static final long T0 = System.nanoTime();

    public static void main(String[] argv) throws Exception {
        Map<String, String> a = new HashMap<>();
        for (String s : argv) {
            int i = s.indexOf('=');
            if (i < 0) {
                throw new IllegalArgumentException("expected key=value, got " + s);
            }
            a.put(s.substring(0, i), s.substring(i + 1));
        }
        String mode = a.getOrDefault("mode", "run");
        boolean init = mode.equals("init");
        String table = a.getOrDefault("table", "public.t");
        String state = req(a, "state");
        long n = Long.parseLong(a.getOrDefault("n", "0"));
        boolean showFirst = a.containsKey("show_first");
        String snapshot = init ? "no_data" : a.getOrDefault("snapshot", "no_data");
        String prefix = "bench";

        Properties p = new Properties();
        p.setProperty("name", "bench-pg");
        p.setProperty("connector.class", "io.debezium.connector.postgresql.PostgresConnector");
        p.setProperty("database.hostname", a.getOrDefault("host", "127.0.0.1"));
        p.setProperty("database.port", a.getOrDefault("port", "5432"));
        p.setProperty("database.user", req(a, "user"));
        p.setProperty("database.password", a.getOrDefault("password", ""));
        p.setProperty("database.dbname", req(a, "dbname"));
        p.setProperty("topic.prefix", prefix);
        p.setProperty("plugin.name", "pgoutput");
        p.setProperty("slot.name", req(a, "slot"));
        p.setProperty("publication.name", req(a, "publication"));
        p.setProperty("publication.autocreate.mode", "filtered");
        p.setProperty("table.include.list", table);
        // Our file sink writes no tombstones; don't make Debezium produce 100k extra records.
        p.setProperty("tombstones.on.delete", "false");
        // no_data: offsets present on the second start, so streaming resumes there.
        // initial (snapshot bench): an empty state dir, so the table is snapshotted first.
        p.setProperty("snapshot.mode", snapshot);
        if (a.containsKey("snapshot_threads")) {
            p.setProperty("snapshot.max.threads", a.get("snapshot_threads"));
        }
        p.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        p.setProperty("offset.storage.file.filename", state + "/offsets.dat");
        p.setProperty("offset.flush.interval.ms", init ? "0" : "10000");
        // JSON without the Connect schema, like our output.
        p.setProperty("converter.schemas.enable", "false");
        p.setProperty("key.converter.schemas.enable", "false");
        p.setProperty("value.converter.schemas.enable", "false");
        if (init) {
            p.setProperty("heartbeat.interval.ms", "100");
        }
        for (Map.Entry<String, String> e : a.entrySet()) {
            if (e.getKey().startsWith("prop.")) {
                p.setProperty(e.getKey().substring(5), e.getValue());
            }
        }

        String topic = prefix + "." + table;
        CountDownLatch reached = new CountDownLatch(1);
        CountDownLatch stopped = new CountDownLatch(1);
        // The engine calls the consumer from one thread at a time; the arrays only carry state.
        long[] count = {0};
        long[] bytes = {0};
        long[] firstNs = {0};
        Throwable[] failure = {null};

        DebeziumEngine<ChangeEvent<String, String>> engine = DebeziumEngine.create(Json.class)
                .using(p)
                .using((success, message, error) -> {
                    if (!success) {
                        System.err.println("engine stopped: " + message);
                        failure[0] = error != null ? error : new RuntimeException(message);
                    }
                    stopped.countDown();
                    reached.countDown();
                })
                .notifying((List<ChangeEvent<String, String>> batch,
                            DebeziumEngine.RecordCommitter<ChangeEvent<String, String>> committer) -> {
                    for (ChangeEvent<String, String> ev : batch) {
                        if (init) {
                            if (ev.destination().startsWith("__debezium-heartbeat")) {
                                reached.countDown();
                            }
                        } else if (topic.equals(ev.destination()) && ev.value() != null) {
                            if (count[0] == 0) {
                                firstNs[0] = System.nanoTime();
                                if (showFirst) {
                                    System.err.println("first record: key=" + ev.key() + " value=" + ev.value());
                                }
                            }
                            count[0]++;
                            bytes[0] += ev.value().length();
                            if (count[0] == n) {
                                long now = System.nanoTime();
                                if (showFirst) {
                                    System.err.println("last record: key=" + ev.key() + " value=" + ev.value());
                                }
                                System.out.printf("DONE records=%d elapsed_ms=%d first_to_last_ms=%d avg_value_chars=%d%n",
                                        count[0], ms(now - T0), ms(now - firstNs[0]), bytes[0] / count[0]);
                                System.out.flush();
                                reached.countDown();
                            }
                        }
                        committer.markProcessed(ev);
                    }
                    committer.markBatchFinished();
                })
                .build();
        System.err.println("engine: " + engine.getClass().getName());

        ExecutorService exec = Executors.newSingleThreadExecutor();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
                stopped.await(30, TimeUnit.SECONDS);
            } catch (IOException | InterruptedException e) {
                // exiting anyway
            }
            if (!init) {
                System.err.println("STOPPED records=" + count[0]);
            }
        }));
        exec.execute(engine);
        reached.await();
        if (failure[0] != null) {
            failure[0].printStackTrace();
            System.exit(1);
        }
        if (init) {
            engine.close(); // commits the heartbeat's offset
            stopped.await(30, TimeUnit.SECONDS);
            System.out.println("OFFSET STORED");
            System.out.flush();
            System.exit(0);
        }
        // run mode: stay up until the caller has read /proc and signals us.
        stopped.await();
        System.exit(failure[0] == null ? 0 : 1);
    }

    private static long ms(long nanos) {
        return TimeUnit.NANOSECONDS.toMillis(nanos);
    }

    private static String req(Map<String, String> a, String k) {
        String v = a.get(k);
        if (v == null) {
            throw new IllegalArgumentException("missing " + k + "=...");
        }
        return v;
    }
}

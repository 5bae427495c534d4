package bench;

import io.debezium.engine.ChangeEvent;
import io.debezium.engine.DebeziumEngine;
import io.debezium.engine.format.Json;

import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicLong;

/**
 * Debezium side of bench/mysql-catchup: runs the Debezium MariaDB connector in the embedded
 * engine, as a Debezium user embedding it would, and counts the change records of one table.
 *
 * <p>Records are delivered already serialized to JSON by the engine ({@code Json.class} format,
 * Kafka's JsonConverter with schemas disabled), the same work our file sink does; the consumer
 * only counts them, sums their sizes, and drops them. Offsets go to a FileOffsetBackingStore and
 * the schema history to a file, both under {@code state=DIR}.
 *
 * <p>Usage: {@code java -cp ... bench.DebeziumCatchup mode=init|run key=value...}
 * <ul>
 *   <li>{@code mode=init}: schema-only snapshot ({@code snapshot.mode=no_data}) that records the
 *       current binlog position, then waits for the first heartbeat record (heartbeats need some
 *       binlog event to fire on: the caller writes to a table outside the include list), commits
 *       the offset, prints {@code OFFSET STORED} and exits 0.</li>
 *   <li>{@code mode=run n=N}: resumes from the stored offset, counts records of {@code db.table}
 *       and, at N, prints one {@code DONE ...} line, then keeps the JVM alive (so the caller can
 *       read its /proc CPU and RSS) until SIGINT/SIGTERM, which closes the engine (and prints
 *       {@code STOPPED records=C} to stderr). With {@code snapshot=initial} (an empty state dir)
 *       the connector snapshots the table first ({@code snapshot.mode=initial}),
 *       {@code snapshot_threads=T} setting {@code snapshot.max.threads}; the snapshot's records
 *       are counted the same way (bench/mysql-catchup --mode snapshot).</li>
 * </ul>
 * Other keys: host, port, user, password, db, table (default t), state (directory),
 * server_id (default 5401), show_first (any value: print the first record to stderr).
 *
 * <p>Kafka mode (bench/mysql-kafka), {@code sink=kafka brokers=HOST:PORT topic_prefix=P}: every
 * record of {@code db.table} (tombstones included: {@code tombstones.on.delete} keeps its
 * default, true, like our Kafka sink) is sent with a {@link KafkaProducer} to its Debezium
 * destination {@code P.db.table}, key and value being the engine's JSON strings. The producer
 * is configured like our sink: {@code acks=all}, {@code enable.idempotence=true},
 * {@code compression.type=lz4}, {@code linger.ms=5}; everything else is the Java client's
 * default. {@code n} then counts records whose delivery was acknowledged, and {@code n=0}
 * runs until SIGINT/SIGTERM. {@code wait=batch} (default) sends a batch, waits for all its
 * acknowledgements, then marks it processed (what Debezium Server's Kafka sink does, so the
 * offset never passes an unacknowledged record); {@code wait=async} marks records processed
 * at once and lets the producer deliver in the background (Kafka Connect style throughput,
 * without its offset bookkeeping). {@code prop.K=V} overrides an engine/connector property,
 * {@code producer.K=V} a producer property. Without {@code sink=kafka} nothing changes (the
 * counting mode bench/mysql-catchup uses).
 */
public final class DebeziumCatchup {
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
        String db = req(a, "db");
        String table = db + "." + a.getOrDefault("table", "t");
        String state = req(a, "state");
        long n = Long.parseLong(a.getOrDefault("n", "0"));
        boolean showFirst = a.containsKey("show_first");
        boolean kafka = a.getOrDefault("sink", "count").equals("kafka");
        boolean waitBatch = !a.getOrDefault("wait", "batch").equals("async");
        String prefix = a.getOrDefault("topic_prefix", "bench");
        String snapshot = init ? "no_data" : a.getOrDefault("snapshot", "no_data");

        Properties p = new Properties();
        p.setProperty("name", "bench");
        p.setProperty("connector.class", "io.debezium.connector.mysql.MySqlConnector");
        p.setProperty("connector.adapter", "mariadb");
        p.setProperty("database.hostname", a.getOrDefault("host", "127.0.0.1"));
        p.setProperty("database.port", a.getOrDefault("port", "3306"));
        p.setProperty("database.user", req(a, "user"));
        p.setProperty("database.password", a.getOrDefault("password", ""));
        p.setProperty("database.server.id", a.getOrDefault("server_id", "5401"));
        p.setProperty("topic.prefix", prefix);
        p.setProperty("database.include.list", db);
        p.setProperty("table.include.list", table);
        p.setProperty("include.schema.changes", "false");
        // Our file sink writes no tombstones; don't make Debezium produce 100k extra records.
        // Our Kafka sink does write them, so Debezium keeps its default (true) there.
        if (!kafka) {
            p.setProperty("tombstones.on.delete", "false");
        }
        // no_data: offsets present on the second start, so the snapshot is skipped and streaming
        // resumes there. initial (snapshot bench): an empty state dir, so the table is read first.
        p.setProperty("snapshot.mode", snapshot);
        if (a.containsKey("snapshot_threads")) {
            p.setProperty("snapshot.max.threads", a.get("snapshot_threads"));
        }
        p.setProperty("offset.storage", "org.apache.kafka.connect.storage.FileOffsetBackingStore");
        p.setProperty("offset.storage.file.filename", state + "/offsets.dat");
        p.setProperty("offset.flush.interval.ms", init ? "0" : "10000");
        p.setProperty("schema.history.internal", "io.debezium.storage.file.history.FileSchemaHistory");
        p.setProperty("schema.history.internal.file.filename", state + "/schema-history.dat");
        // Keep the snapshot's schema part small and the snapshot lock-free (the test bed is
        // shared; nothing writes to the bench table or changes its schema while it runs, so the
        // position read without a lock is consistent with the rows).
        p.setProperty("schema.history.internal.store.only.captured.databases.ddl", "true");
        p.setProperty("snapshot.locking.mode", "none");
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
        long[] count = {0};
        long[] bytes = {0};
        long[] firstNs = {0};
        Throwable[] failure = {null};
        KafkaProducer<String, String> producer = kafka && !init ? producer(a) : null;
        AtomicLong delivered = new AtomicLong();
        AtomicLong deliveredBytes = new AtomicLong();
        long[] firstDeliveredNs = {0};

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
                    if (producer != null) {
                        // Kafka mode: produce, (wait for the acknowledgements,) mark processed.
                        List<Future<RecordMetadata>> sent = new ArrayList<>(batch.size());
                        for (ChangeEvent<String, String> ev : batch) {
                            if (!topic.equals(ev.destination())) {
                                continue;
                            }
                            if (showFirst && count[0] == 0 && ev.value() != null) {
                                System.err.println("first record: key=" + ev.key() + " value=" + ev.value());
                            }
                            count[0]++;
                            int size = ev.value() == null ? -1 : ev.value().length();
                            sent.add(producer.send(new ProducerRecord<>(ev.destination(), ev.key(), ev.value()),
                                    (md, err) -> {
                                        if (err != null) {
                                            System.err.println("delivery failed: " + err);
                                            failure[0] = err;
                                            reached.countDown();
                                            return;
                                        }
                                        long d = delivered.incrementAndGet();
                                        if (size >= 0) {
                                            deliveredBytes.addAndGet(size);
                                        }
                                        if (d == 1) {
                                            firstDeliveredNs[0] = System.nanoTime();
                                        }
                                        if (d == n) {
                                            long now = System.nanoTime();
                                            System.out.printf("DONE records=%d elapsed_ms=%d first_to_last_ms=%d avg_value_chars=%d%n",
                                                    d, ms(now - T0), ms(now - firstDeliveredNs[0]), deliveredBytes.get() / d);
                                            System.out.flush();
                                            reached.countDown();
                                        }
                                    }));
                        }
                        if (waitBatch) {
                            for (Future<RecordMetadata> f : sent) {
                                try {
                                    f.get();
                                } catch (ExecutionException e) {
                                    throw new RuntimeException("Kafka delivery failed", e.getCause());
                                }
                            }
                        }
                        for (ChangeEvent<String, String> ev : batch) {
                            committer.markProcessed(ev);
                        }
                        committer.markBatchFinished();
                        return;
                    }
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

        ExecutorService exec = Executors.newSingleThreadExecutor();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            try {
                engine.close();
                stopped.await(30, TimeUnit.SECONDS);
                if (producer != null) {
                    producer.close(Duration.ofSeconds(10));
                }
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

    /** The producer of Kafka mode: our sink's delivery settings, the Java client's defaults otherwise. */
    static KafkaProducer<String, String> producer(Map<String, String> a) {
        Properties pp = new Properties();
        pp.setProperty(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, req(a, "brokers"));
        pp.setProperty(ProducerConfig.ACKS_CONFIG, "all");
        pp.setProperty(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
        pp.setProperty(ProducerConfig.COMPRESSION_TYPE_CONFIG, "lz4");
        pp.setProperty(ProducerConfig.LINGER_MS_CONFIG, "5");
        pp.setProperty(ProducerConfig.CLIENT_ID_CONFIG, "debezium-bench");
        for (Map.Entry<String, String> e : a.entrySet()) {
            if (e.getKey().startsWith("producer.")) {
                pp.setProperty(e.getKey().substring(9), e.getValue());
            }
        }
        return new KafkaProducer<>(pp, new StringSerializer(), new StringSerializer());
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

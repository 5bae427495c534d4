-- Schema and the cdc user for the docker-compose demo.
CREATE DATABASE IF NOT EXISTS shop;
CREATE TABLE shop.customers (id INT AUTO_INCREMENT PRIMARY KEY, name VARCHAR(50), email VARCHAR(80));
CREATE TABLE shop.orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id INT, qty INT,
  status ENUM('new','paid','shipped') DEFAULT 'new', placed_at TIMESTAMP(3) DEFAULT CURRENT_TIMESTAMP(3));
INSERT INTO shop.customers (name, email) VALUES ('Ada Lovelace', 'ada@example.com'), ('Grace Hopper', 'grace@example.com');
CREATE USER 'cdc'@'%' IDENTIFIED BY 'cdc-demo';
GRANT REPLICATION SLAVE, REPLICATION CLIENT, RELOAD ON *.* TO 'cdc'@'%';
GRANT SELECT, INSERT, UPDATE, DELETE ON shop.* TO 'cdc'@'%';

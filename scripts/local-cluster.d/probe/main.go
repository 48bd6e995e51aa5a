// probe: a tiny static test program for the local cluster.
//
//	probe dig NAME SERVER:PORT   resolve NAME (A records) with that DNS
//	                             server only; exit 1 when it does not answer
//	probe serve                  HTTP on $PORT (8080): / answers "ok HOST",
//	                             /resolve?name=N resolves N with the pod's
//	                             resolver (/etc/resolv.conf), /write writes
//	                             $DATA_DIR/probe.txt and reads it back;
//	                             $RESOLVE_NAME, when set, is resolved at
//	                             start and the answer logged;
//	                             /bytes?size=N answers N deterministic bytes
//	probe get URL                HTTP GET; prints the body, exit 1 unless 200
//	                             (https: trusts the pod's service-account CA
//	                             and sends its token, when it has them)
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe dig NAME SERVER:PORT | serve | get URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "dig":
		if len(os.Args) != 4 {
			fmt.Fprintln(os.Stderr, "usage: probe dig NAME SERVER:PORT")
			os.Exit(2)
		}
		os.Exit(dig(os.Args[2], os.Args[3]))
	case "serve":
		serve()
	case "get":
		if len(os.Args) != 3 {
			fmt.Fprintln(os.Stderr, "usage: probe get URL")
			os.Exit(2)
		}
		os.Exit(get(os.Args[2]))
	default:
		fmt.Fprintf(os.Stderr, "probe: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

func dig(name, server string) int {
	resolver := &net.Resolver{
		PreferGo: true,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, server)
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := resolver.LookupHost(ctx, name)
	if err != nil {
		fmt.Fprintf(os.Stderr, "probe: %s via %s: %v\n", name, server, err)
		return 1
	}
	fmt.Println(strings.Join(addrs, " "))
	return 0
}

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount/"

func get(url string) int {
	client := &http.Client{Timeout: 10 * time.Second}
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintf(os.Stderr, "probe: %v\n", err)
		return 1
	}
	if strings.HasPrefix(url, "https:") {
		if pem, err := os.ReadFile(serviceAccount + "ca.crt"); err == nil {
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(pem)
			client.Transport = &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
		}
		if token, err := os.ReadFile(serviceAccount + "token"); err == nil {
			req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		fmt.Fprintf(os.Stderr, "probe: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Print(string(body))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(os.Stderr, "probe: %s answered %s\n", url, resp.Status)
		return 1
	}
	return 0
}

func resolve(name string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return "", err
	}
	return strings.Join(addrs, " "), nil
}

func serve() {
	port := os.Getenv("PORT")
	if port == "" {
		port = "8080"
	}
	host, _ := os.Hostname()
	if name := os.Getenv("RESOLVE_NAME"); name != "" {
		addrs, err := resolve(name)
		fmt.Printf("probe: resolve %s: %s %v\n", name, addrs, err)
	}
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, "ok %s\n", host)
	})
	// /bytes?size=N: N deterministic bytes, byte i = (7i + i/251) mod 256
	// (the end-to-end tests ingest them as a Blob's URL source).
	http.HandleFunc("/bytes", func(w http.ResponseWriter, r *http.Request) {
		var size int
		if _, err := fmt.Sscan(r.URL.Query().Get("size"), &size); err != nil || size < 0 || size > 1<<30 {
			http.Error(w, "size must be a number of bytes up to 1 GiB", http.StatusBadRequest)
			return
		}
		body := make([]byte, size)
		for i := range body {
			body[i] = byte(i*7 + i/251)
		}
		w.Header().Set("Content-Length", fmt.Sprint(size))
		_, _ = w.Write(body)
	})
	http.HandleFunc("/resolve", func(w http.ResponseWriter, r *http.Request) {
		addrs, err := resolve(r.URL.Query().Get("name"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		fmt.Fprintln(w, addrs)
	})
	http.HandleFunc("/write", func(w http.ResponseWriter, _ *http.Request) {
		dir := os.Getenv("DATA_DIR")
		if dir == "" {
			http.Error(w, "DATA_DIR not set", http.StatusInternalServerError)
			return
		}
		path := filepath.Join(dir, "probe.txt")
		want := fmt.Sprintf("written by %s at %s\n", host, time.Now().UTC().Format(time.RFC3339Nano))
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			http.Error(w, fmt.Sprintf("read back %q, %v", got, err), http.StatusInternalServerError)
			return
		}
		fmt.Fprintf(w, "wrote %s (uid %d): %s", path, os.Getuid(), got)
	})
	fmt.Printf("probe: serving on :%s\n", port)
	if err := http.ListenAndServe(":"+port, nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

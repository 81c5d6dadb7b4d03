// Command dayu-example calls a Dayu mesh from Go: it lists the backend's pipelines, reads the
// scheduler's statistics, sets a stream's policy and follows the stream's decisions for a while.
// It prints what it does, then, as its last line, one JSON object with what it saw.
//
//	dayu-example --backend HOST:PORT --scheduler HOST:PORT --stream STREAM_ID [--token TOKEN] \
//	  [--watch-seconds 3] [--policy fixed] [--ca FILE --cert FILE --key FILE [--server-name dayu-mesh]]
//
// Every call carries `authorization: Bearer TOKEN` (--token, by default $DAYU_TOKEN): the backend's
// calls need a token, the scheduler's SetPolicy an admin one (`dayu up` writes the mesh's tokens to
// .dayu/tokens.yaml). Without --ca it uses plaintext; with --ca, --cert and --key, mutual TLS,
// verifying the servers' certificates for --server-name (also sent as the TLS server name and the
// :authority).
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	dayuv1 "dayu/gen/go/dayu/v1"
)

// Deadline of each unary call.
const callTimeout = 10 * time.Second

// tokenEnv is where --token comes from when it is not given.
const tokenEnv = "DAYU_TOKEN"

// result is the last line the program prints.
type result struct {
	Pipelines    []string `json:"pipelines"`
	StatsStreams []string `json:"stats_streams"`
	Policy       string   `json:"policy"`
	Decisions    int      `json:"decisions"`
	LastVersion  uint64   `json:"last_version"`
}

type options struct {
	backend, scheduler, stream, policy string
	token                              string
	watchSeconds                       float64
	ca, cert, key, serverName          string
}

func parseFlags() (options, error) {
	var o options
	fs := flag.NewFlagSet("dayu-example", flag.ContinueOnError)
	fs.StringVar(&o.backend, "backend", "", "backend address HOST:PORT (required)")
	fs.StringVar(&o.scheduler, "scheduler", "", "scheduler address HOST:PORT (required)")
	fs.StringVar(&o.stream, "stream", "", "stream id (required)")
	// Not os.Getenv as the default: -h would print the token.
	fs.StringVar(&o.token, "token", "", "bearer token of the operator API, an admin one for SetPolicy (default $"+tokenEnv+"; dayu up writes them to .dayu/tokens.yaml)")
	fs.Float64Var(&o.watchSeconds, "watch-seconds", 3, "how long to follow WatchDecisions")
	fs.StringVar(&o.policy, "policy", "fixed", "policy to set for the stream")
	fs.StringVar(&o.ca, "ca", "", "CA certificate (PEM) that signed the servers' certificates; enables mutual TLS")
	fs.StringVar(&o.cert, "cert", "", "client certificate (PEM), with --ca")
	fs.StringVar(&o.key, "key", "", "client private key (PEM), with --ca")
	fs.StringVar(&o.serverName, "server-name", "dayu-mesh", "name the servers' certificates are checked for (TLS SNI and :authority)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return o, err
	}
	if o.token == "" {
		o.token = os.Getenv(tokenEnv)
	}
	switch {
	case fs.NArg() > 0:
		return o, fmt.Errorf("unexpected arguments: %v", fs.Args())
	case o.backend == "" || o.scheduler == "" || o.stream == "":
		return o, errors.New("--backend, --scheduler and --stream are required")
	case o.token == "":
		return o, errors.New("no token: the backend's calls and SetPolicy need one; give --token or set " + tokenEnv +
			" (an admin token of the mesh: dayu up writes them to .dayu/tokens.yaml)")
	case o.watchSeconds <= 0:
		return o, errors.New("--watch-seconds must be positive")
	case (o.ca != "" || o.cert != "" || o.key != "") && (o.ca == "" || o.cert == "" || o.key == ""):
		return o, errors.New("mutual TLS needs all of --ca, --cert and --key")
	}
	return o, nil
}

// transport gives plaintext, or mutual TLS when --ca, --cert and --key are set.
func transport(o options) (grpc.DialOption, error) {
	if o.ca == "" {
		return grpc.WithInsecure(), nil
	}
	caPEM, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, fmt.Errorf("reading --ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("--ca %s holds no PEM certificate", o.ca)
	}
	pair, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, fmt.Errorf("loading --cert/--key: %w", err)
	}
	// ServerName is checked against the servers' certificates, sent as SNI, and (through the
	// credentials' Info) used as every call's :authority instead of HOST:PORT.
	return grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs:      roots,
		Certificates: []tls.Certificate{pair},
		ServerName:   o.serverName,
		MinVersion:   tls.VersionTLS12,
	})), nil
}

// withToken is ctx with `authorization: Bearer TOKEN` in the call's outgoing metadata. Metadata set on
// the context works on plaintext and TLS connections alike (grpc refuses PerRPCCredentials that
// require transport security on a plaintext connection); the token then travels in clear, so use
// TLS anywhere but loopback.
func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// callContext is a context for one unary call: its deadline and the token.
func callContext(token string) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), callTimeout)
	return withToken(ctx, token), cancel
}

// explain adds a hint to a call's error when the server refused the token.
func explain(err error) error {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return fmt.Errorf("%w (is --token or $%s one of the mesh's tokens? dayu up writes them to .dayu/tokens.yaml)", err, tokenEnv)
	case codes.PermissionDenied:
		return fmt.Errorf("%w (SetPolicy needs an admin token)", err)
	}
	return err
}

func run(o options) (*result, error) {
	creds, err := transport(o)
	if err != nil {
		return nil, err
	}
	backendConn, err := grpc.Dial(o.backend, creds)
	if err != nil {
		return nil, fmt.Errorf("dialing backend %s: %w", o.backend, err)
	}
	defer backendConn.Close()
	schedulerConn, err := grpc.Dial(o.scheduler, creds)
	if err != nil {
		return nil, fmt.Errorf("dialing scheduler %s: %w", o.scheduler, err)
	}
	defer schedulerConn.Close()
	backend := dayuv1.NewBackendServiceClient(backendConn)
	scheduler := dayuv1.NewSchedulerServiceClient(schedulerConn)
	res := &result{Pipelines: []string{}, StatsStreams: []string{}}

	// 1) Every pipeline, two a page to show paging.
	for token, page := "", 1; ; page++ {
		ctx, cancel := callContext(o.token)
		reply, err := backend.ListPipelines(ctx, &dayuv1.ListPipelinesRequest{PageSize: 2, PageToken: token})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("BackendService/ListPipelines at %s: %w", o.backend, explain(err))
		}
		for _, p := range reply.GetPipelines() {
			fmt.Printf("pipeline %s (page %d)\n", p.GetName(), page)
			res.Pipelines = append(res.Pipelines, p.GetName())
		}
		if token = reply.GetNextPageToken(); token == "" {
			break
		}
	}

	// 2) The scheduler's statistics, every page.
	for token := ""; ; {
		ctx, cancel := callContext(o.token)
		reply, err := scheduler.GetSchedulerStats(ctx, &dayuv1.GetSchedulerStatsRequest{PageToken: token})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("SchedulerService/GetSchedulerStats at %s: %w", o.scheduler, explain(err))
		}
		for _, s := range reply.GetStreams() {
			fmt.Printf("stats for stream %s\n", s.GetStreamId())
			res.StatsStreams = append(res.StatsStreams, s.GetStreamId())
		}
		if token = reply.GetNextPageToken(); token == "" {
			fmt.Printf("scheduler received %d spans\n", reply.GetSpansReceived())
			break
		}
	}

	// 3) The stream's policy, with no parameters (an empty Struct).
	{
		ctx, cancel := callContext(o.token)
		reply, err := scheduler.SetPolicy(ctx, &dayuv1.SetPolicyRequest{
			StreamId: o.stream,
			Policy:   &dayuv1.PolicySpec{Name: o.policy, Params: &structpb.Struct{}},
		})
		cancel()
		if err != nil {
			return nil, fmt.Errorf("SchedulerService/SetPolicy(%s, %s) at %s: %w", o.stream, o.policy, o.scheduler, explain(err))
		}
		d := reply.GetDecision()
		fmt.Printf("policy of %s set to %s: decision version %d by %s\n", o.stream, o.policy, d.GetVersion(), d.GetPolicy())
		res.Policy = o.policy
	}

	// 4) The stream's decisions for --watch-seconds: the current one at once, then each new one.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(o.watchSeconds*float64(time.Second)))
	defer cancel()
	watch, err := scheduler.WatchDecisions(withToken(ctx, o.token), &dayuv1.WatchDecisionsRequest{StreamId: o.stream})
	if err != nil {
		return nil, fmt.Errorf("SchedulerService/WatchDecisions(%s) at %s: %w", o.stream, o.scheduler, explain(err))
	}
	for {
		reply, err := watch.Recv()
		if err == io.EOF {
			fmt.Println("scheduler ended the watch")
			break
		}
		if err != nil {
			if ctx.Err() != nil || status.Code(err) == codes.DeadlineExceeded {
				fmt.Printf("watched %s for %gs\n", o.stream, o.watchSeconds)
				break
			}
			return nil, fmt.Errorf("SchedulerService/WatchDecisions(%s) at %s: %w", o.stream, o.scheduler, explain(err))
		}
		d := reply.GetDecision()
		res.Decisions++
		res.LastVersion = d.GetVersion()
		fmt.Printf("decision %d for %s by %s: %s\n", d.GetVersion(), d.GetStreamId(), d.GetPolicy(), d.GetReason())
	}
	return res, nil
}

func main() {
	o, err := parseFlags()
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "dayu-example: %v\n", err)
		os.Exit(2)
	}
	res, err := run(o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dayu-example: %v\n", err)
		os.Exit(1)
	}
	line, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dayu-example: %v\n", err)
		os.Exit(1)
	}
	fmt.Println(string(line))
}

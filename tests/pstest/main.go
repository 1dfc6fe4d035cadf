// pstest: Google's in-memory Pub/Sub server (cloud.google.com/go/pubsub/v2/pstest) on
// 127.0.0.1, for the tests of tpi_jupyter/fanout/pubsub.py. pstest has no IAM service, so this
// wrapper adds a minimal google.iam.v1.IAMPolicy that keeps each resource's policy in memory
// (a contract stand-in: it checks that the resource exists and stores what it is given).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"cloud.google.com/go/iam/apiv1/iampb"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

type policies struct {
	iampb.UnimplementedIAMPolicyServer
	mu     sync.Mutex
	stored map[string]*iampb.Policy
	server *pstest.Server
}

// exists asks pstest itself whether the topic or subscription is there.
func (p *policies) exists(ctx context.Context, resource string) error {
	var err error
	switch {
	case strings.Contains(resource, "/subscriptions/"):
		_, err = p.server.GServer.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: resource})
	case strings.Contains(resource, "/topics/"):
		_, err = p.server.GServer.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: resource})
	default:
		err = status.Errorf(codes.InvalidArgument, "not a topic or subscription: %q", resource)
	}
	return err
}

func (p *policies) SetIamPolicy(ctx context.Context, req *iampb.SetIamPolicyRequest) (*iampb.Policy, error) {
	if err := p.exists(ctx, req.Resource); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stored[req.Resource] = req.Policy
	return req.Policy, nil
}

func (p *policies) GetIamPolicy(ctx context.Context, req *iampb.GetIamPolicyRequest) (*iampb.Policy, error) {
	if err := p.exists(ctx, req.Resource); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if found, ok := p.stored[req.Resource]; ok {
		return found, nil
	}
	return &iampb.Policy{}, nil
}

func main() {
	port := flag.Int("port", 0, "port on 127.0.0.1 (0: any free port)")
	minDeadline := flag.Int("min-ack-deadline", 10, "smallest ack deadline in seconds (the service's is 10)")
	flag.Parse()
	pstest.SetMinAckDeadline(time.Duration(*minDeadline) * time.Second)
	iam := &policies{stored: map[string]*iampb.Policy{}}
	server := pstest.NewServerWithCallback(*port, func(s *grpc.Server) { iampb.RegisterIAMPolicyServer(s, iam) })
	iam.server = server
	fmt.Println(server.Addr)
	os.Stdout.Sync()
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
	server.Close()
}

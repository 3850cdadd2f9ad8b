#!/usr/bin/env python3
"""P3's Python reference: the start-up work of the original deploy.py for one chart, in
miniature: argparse with the same flags, one `git log` per image directory through
subprocess, the plan printed. What deploy.ts's --help and --dry-run do first, in Python."""
import argparse
import os
import subprocess


def last_git_modified(path, n=1):
    out = subprocess.check_output(['git', 'log', '-n', str(n), '--pretty=format:%h', '--', path])
    return out.decode().split('\n')[-1]


def main():
    parser = argparse.ArgumentParser(description='Builds the chart\'s images and deploys it with helm.')
    parser.add_argument('chartname', nargs='*')
    parser.add_argument('--no-setup', action='store_true')
    parser.add_argument('--build', action='store_true')
    parser.add_argument('--push', action='store_true')
    parser.add_argument('--deploy', action='store_true')
    parser.add_argument('--dry-run', action='store_true')
    args = parser.parse_args()
    for chart in args.chartname:
        for kind, root, prefix in (('user', 'user-images', 'earthlabhubops/ea-k8s-user-'),
                                   ('hub', 'hub-images', 'earthlabhubops/ea-k8s-hub-')):
            path = os.path.join(root, chart)
            if not os.path.isdir(path):
                continue
            tag = last_git_modified(path)
            if args.build:
                print('+ docker build -t {}{}:{} {}'.format(prefix, chart, tag, path))
            if args.deploy:
                print('Using {}{}:{} as {} image for {}'.format(prefix, chart, tag, kind, chart))
        if args.deploy:
            print('+ helm upgrade --install --namespace {0} {0} hub-charts/{0} ...'.format(chart))


if __name__ == '__main__':
    main()
